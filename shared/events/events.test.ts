import { describe, expect, it } from 'vitest';
import { isRetriable } from '../errors/index.ts';
import { createEvent, eventId, isObjectUri, parseEvent, runIdOf } from './index.ts';

const sha = 'ab'.repeat(32);
const created = () =>
  createEvent('heimdall.checkpoint.created', {
    stage: 'ingest',
    source: 'heimdall/ingest',
    data: { bucket: 'heimdall-checkpoints', key: 'runs/a b.pth', size: 10, etag: 'e', runId: runIdOf(sha) },
  });

describe('CloudEvents', () => {
  it('derive the run id from the checkpoint sha256 and the event id from run and stage', () => {
    expect(runIdOf(sha)).toBe('abababababababab');
    expect(eventId('abababababababab', 'export')).toBe('abababababababab.export');
    expect(created()).toMatchObject({ specversion: '1.0', id: 'abababababababab.ingest', type: 'heimdall.checkpoint.created', source: 'heimdall/ingest', datacontenttype: 'application/json' });
  });

  it('round-trip through JSON and validation', () => {
    const event = created();
    expect(parseEvent(JSON.parse(JSON.stringify(event)))).toEqual(event);
  });

  it('reject data that does not match the type, naming the field', () => {
    const event = { ...created(), data: { ...created().data, size: 'big' } };
    expect(() => parseEvent(event)).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/size/) }));
  });

  it('accept what other producers may send: no time (stamped on arrival), JSON with a charset', () => {
    const { time: _time, ...untimed } = created();
    const parsed = parseEvent({ ...untimed, datacontenttype: 'application/json; charset=utf-8' });
    expect(Date.parse(parsed.time)).toBeGreaterThan(Date.now() - 60_000);
    expect(parsed.datacontenttype).toBe('application/json');
    expect(() => parseEvent({ ...created(), datacontenttype: 'text/plain' })).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT' }));
  });

  it('reject unknown types and bad envelopes', () => {
    expect(() => parseEvent({ ...created(), type: 'heimdall.nope' })).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: 'unknown event type heimdall.nope' }));
    expect(() => parseEvent({ ...created(), specversion: '0.3' })).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/specversion/) }));
  });

  it('refuse to create an event whose data breaks its schema, with INVALID_EVENT (a retry would build the same data)', () => {
    expect(() => createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'x', data: { runId: 'nothex' } as never })).toThrowError(
      expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/^invalid heimdall\.checkpoint\.created: .*runId/) }),
    );
  });

  it('know only their own types: a type named like an Object property is unknown, not a crash', () => {
    for (const type of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
      expect(() => parseEvent({ ...created(), type }), type).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: `unknown event type ${type}` }));
    }
  });
});

/** What export publishes, with the uris our stores make. */
const exportedEvent = (runId: string) =>
  createEvent('heimdall.model.exported', {
    stage: 'export',
    source: 'heimdall/export',
    data: {
      runId,
      checkpoint: { uri: `s3://heimdall-checkpoints/${runId}/model.pth`, sha256: sha, format: 'torch-zip' },
      onnx: { uri: `s3://heimdall-models/models/localization/${runId}/model.onnx`, sha256: sha, bytes: 10, opset: 14, irVersion: 7 },
      architecture: { name: 'LocalizationNet', variant: 'tiny', params: 1 },
      warnings: [],
      durationMs: 1,
    },
  });

describe('object uris in events', () => {
  const table: [string, boolean][] = [
    ['s3://heimdall-models/models/localization/0123456789abcdef/model.onnx', true],
    ['s3://heimdall-checkpoints/runs/a b.pth', true],
    ['file:///var/lib/heimdall/buckets/heimdall-models/k', true],
    ['s3://heimdall-models', false],
    ['s3://heimdall-models/', false],
    ['s3://Not_A_Bucket/k', false],
    ['s3:///k', false],
    ['file://host/tmp/k', false],
    ['file:///', false],
    ['http://example.com/model.onnx', false],
    ['models/localization/x/model.onnx', false],
    ['/tmp/model.onnx', false],
    ['', false],
  ];
  for (const [uri, valid] of table) {
    it(`${JSON.stringify(uri)} is ${valid ? '' : 'not '}an object uri`, () => {
      expect(isObjectUri(uri)).toBe(valid);
    });
  }

  it('an event whose onnx or checkpoint uri is not one is INVALID_EVENT, naming the field', () => {
    const event = exportedEvent('0123456789abcdef');
    for (const [field, data] of [
      ['onnx.uri', { ...event.data, onnx: { ...event.data.onnx, uri: 'http://example.com/model.onnx' } }],
      ['checkpoint.uri', { ...event.data, checkpoint: { ...event.data.checkpoint, uri: '' } }],
    ] as const) {
      let error: unknown;
      try {
        parseEvent({ ...event, data });
      } catch (e) {
        error = e;
      }
      expect(error).toMatchObject({ code: 'INVALID_EVENT', message: expect.stringContaining(`${field}: must be an absolute s3://bucket/key or file:///path uri`) });
      expect(isRetriable((error as { code: 'INVALID_EVENT' }).code)).toBe(false);
    }
  });

  it('the checkpoint of a run carries the version it was read from', () => {
    const event = exportedEvent('0123456789abcdef');
    const versioned = { ...event, data: { ...event.data, checkpoint: { ...event.data.checkpoint, versionId: '3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY' } } };
    expect(parseEvent(JSON.parse(JSON.stringify(versioned)))).toMatchObject({ data: { checkpoint: { versionId: '3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY' } } });
    expect(() => parseEvent({ ...versioned, data: { ...versioned.data, checkpoint: { ...versioned.data.checkpoint, versionId: '' } } })).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT' }));
  });
});
