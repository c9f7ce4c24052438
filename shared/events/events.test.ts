import { describe, expect, it } from 'vitest';
import { isRetriable } from '../errors/index.ts';
import { createEvent, eventId, inContext, isObjectUri, parseEvent, runIdOf } from './index.ts';

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
    expect(() => parseEvent({ ...created(), datacontenttype: 'text/plain' })).toThrowError(expect.objectContaining({ code: 'UNSUPPORTED_MEDIA_TYPE', message: expect.stringMatching(/^unsupported datacontenttype text\/plain: /) }));
    expect(() => parseEvent({ ...created(), data_base64: 'e30=' })).toThrowError(expect.objectContaining({ code: 'UNSUPPORTED_MEDIA_TYPE', message: expect.stringMatching(/^unsupported data_base64 \(binary data\): /) }));
    expect(isRetriable('UNSUPPORTED_MEDIA_TYPE')).toBe(false);
  });

  it('read `time` as RFC 3339 allows it (t/z in any case, offsets, fractions of any length) and keep it in one form: toISOString()', () => {
    const table: [string, string][] = [
      ['2026-11-27T10:00:00Z', '2026-11-27T10:00:00.000Z'],
      ['2026-11-27t10:00:00z', '2026-11-27T10:00:00.000Z'],
      ['2026-11-27T12:30:00+02:30', '2026-11-27T10:00:00.000Z'],
      ['2026-11-27T01:00:00-09:00', '2026-11-27T10:00:00.000Z'],
      ['2026-11-27T10:00:00-00:00', '2026-11-27T10:00:00.000Z'],
      ['2026-11-27T10:00:00.5Z', '2026-11-27T10:00:00.500Z'],
      // What Python's datetime.isoformat() writes (microseconds), and nanoseconds (Go): truncated to the millisecond.
      ['2026-11-27T10:00:00.123456+00:00', '2026-11-27T10:00:00.123Z'],
      ['2026-11-27T10:00:00.999999999Z', '2026-11-27T10:00:00.999Z'],
      ['2026-11-28T00:30:00+14:30', '2026-11-27T10:00:00.000Z'],
      ['2024-02-29T00:00:00Z', '2024-02-29T00:00:00.000Z'],
      // A leap second (RFC 3339 §5.7): a Date has none, it becomes the next minute's start.
      ['2016-12-31T23:59:60Z', '2017-01-01T00:00:00.000Z'],
      ['0001-01-01T00:00:00Z', '0001-01-01T00:00:00.000Z'],
    ];
    for (const [sent, kept] of table) expect(parseEvent({ ...created(), time: sent }).time, sent).toBe(kept);
    for (const time of ['2026-11-27 10:00:00Z', '2026-11-27T10:00:00', '2026-11-27T10:00Z', '2026-02-29T10:00:00Z', '2026-13-01T00:00:00Z', '2026-11-27T24:00:00Z', '2026-11-27T10:00:00+24:00', '2026-11-27T10:00:00.Z', '26-11-27T10:00:00Z', '0000-01-01T00:00:00+01:00', 'yesterday', '']) {
      expect(() => parseEvent({ ...created(), time }), time).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/time: must be an RFC 3339 date-time/) }));
    }
  });

  it('carry the distributed-tracing extension; an invalid traceparent is dropped with its tracestate, never a refused event', () => {
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const event = created();
    expect(parseEvent({ ...event, traceparent, tracestate: ' rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE' })).toMatchObject({ traceparent, tracestate: 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE' });
    // A later version may append fields after its four.
    expect(parseEvent({ ...event, traceparent: `cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next` }).traceparent).toBe('cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next');
    for (const invalid of [
      '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01', // uppercase
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01', // trace id all zeros
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01', // parent id all zeros
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', // version ff
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra', // version 00 is 55 characters
      '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01', // short trace id
      '4bf92f3577b34da6a3ce929d0e0e4736',
      42,
    ]) {
      const parsed = parseEvent({ ...event, traceparent: invalid, tracestate: 'rojo=1' });
      expect(parsed, String(invalid)).toEqual(event);
    }
    for (const tracestate of ['Rojo=1', 'rojo=1,rojo=2', 'rojo=a=b', 'rojo', Array.from({ length: 33 }, (_, i) => `k${i}=v`).join(','), ',']) {
      expect(parseEvent({ ...event, traceparent, tracestate }), tracestate).toEqual({ ...event, traceparent });
    }
  });

  it('put an event in the context of the one that caused it: its trace replaced, its subject kept or filled in', () => {
    const context = { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', tracestate: 'rojo=1', subject: 'runs/a b.pth' };
    const event = created();
    expect(inContext(event, context)).toEqual({ ...event, ...context });
    const named = { ...event, subject: 'its own', traceparent: '00-11111111111111111111111111111111-2222222222222222-00' };
    expect(inContext(named, { traceparent: context.traceparent })).toEqual({ ...named, traceparent: context.traceparent });
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
