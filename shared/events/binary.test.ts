import { describe, expect, it } from 'vitest';
import { createEvent, runIdOf } from './index.ts';
import { fromMessage, STRUCTURED_CONTENT_TYPE, toBinary } from './binary.ts';

const event = createEvent('heimdall.checkpoint.created', {
  stage: 'ingest',
  source: 'heimdall/ingest',
  subject: 'runs/a b.pth',
  data: { bucket: 'heimdall-checkpoints', key: 'runs/a b.pth', size: 10, etag: 'e', runId: runIdOf('ab'.repeat(32)) },
});

describe('CloudEvents in message headers', () => {
  it('binary mode: attributes as ce-* headers, data as the JSON body, and back', () => {
    const { headers, body } = toBinary(event);
    expect(headers).toMatchObject({ 'ce-specversion': '1.0', 'ce-id': event.id, 'ce-type': event.type, 'ce-source': 'heimdall/ingest', 'ce-subject': 'runs/a%20b.pth', 'content-type': 'application/json' });
    expect(JSON.parse(body)).toEqual(event.data);
    expect(fromMessage(Object.entries(headers), body)).toEqual(event);
  });

  it('percent-encodes attribute values that are not printable ASCII (a key with accents and spaces)', () => {
    const accented = { ...event, subject: 'runs/épreuve 3 "final" 100%.pth' };
    const { headers, body } = toBinary(accented);
    expect(headers['ce-subject']).toBe('runs/%C3%A9preuve%203%20%22final%22%20100%25.pth');
    expect(() => new Headers(headers)).not.toThrow();
    expect(fromMessage(new Headers(headers), body)).toEqual(accented);
  });

  it('header names in any case (HTTP lowercases, other transports may not)', () => {
    const { headers, body } = toBinary(event);
    const upper = Object.entries(headers).map(([k, v]) => [k.toUpperCase(), v] as const);
    expect(fromMessage(upper, body)).toEqual(event);
  });

  it('structured mode: the whole envelope as the body', () => {
    expect(fromMessage([['Content-Type', `${STRUCTURED_CONTENT_TYPE}; charset=utf-8`]], JSON.stringify(event))).toEqual(event);
  });

  it('reject what is not a CloudEvent, with the reason', () => {
    expect(() => fromMessage([], '{}')).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/ce-specversion/) }));
    expect(() => fromMessage(Object.entries(toBinary(event).headers), 'not json')).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: 'event data is not JSON' }));
    const { headers } = toBinary(event);
    expect(() => fromMessage(Object.entries(headers), JSON.stringify({ ...event.data, size: -1 }))).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/size/) }));
  });
});
