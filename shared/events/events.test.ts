import { describe, expect, it } from 'vitest';
import { createEvent, eventId, parseEvent, runIdOf } from './index.ts';

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

  it('refuse to create an event whose data breaks its schema', () => {
    expect(() => createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'x', data: { runId: 'nothex' } as never })).toThrow();
  });
});
