import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HeimdallError, isRetriable } from '../errors/index.ts';
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

describe('what a transport may deliver: every message that is not a valid event is INVALID_EVENT, never a crash', () => {
  const { headers, body } = toBinary(event);
  const structured = [['content-type', STRUCTURED_CONTENT_TYPE]] as const;
  const deep = (depth: number) => '['.repeat(depth) + ']'.repeat(depth);
  const cases: [string, Iterable<readonly [string, string]>, string, RegExp][] = [
    ['no headers, data only', [], body, /no ce-specversion header/],
    ['another spec version', Object.entries({ ...headers, 'ce-specversion': '0.3' }), body, /specversion/],
    ['a type named like an Object property', Object.entries({ ...headers, 'ce-type': 'constructor' }), body, /^unknown event type constructor$/],
    ['a header that is not percent-encoding', Object.entries({ ...headers, 'ce-subject': 'runs/%E0%A4%A.pth' }), body, /ce-subject is not valid percent-encoding/],
    ['a time that is no time', Object.entries({ ...headers, 'ce-time': 'yesterday' }), body, /time/],
    ['data of another content type', Object.entries({ ...headers, 'content-type': 'text/plain' }), body, /unsupported data content-type text\/plain/],
    ['data that is not JSON', Object.entries(headers), '{"bucket":', /event data is not JSON/],
    ['data that is JSON null', Object.entries(headers), 'null', /invalid heimdall\.checkpoint\.created/],
    ['data nested 100000 deep where a number belongs', Object.entries(headers), JSON.stringify({ ...event.data, size: 0 }).replace('"size":0', `"size":${deep(100_000)}`), /size/],
    ['a structured body that is not JSON', structured, '{"specversion":"1.0"', /structured-mode body is not JSON/],
    ['a structured body that is an array', structured, '[]', /invalid envelope/],
    ['a structured body nested 100000 deep', structured, deep(100_000), /invalid envelope/],
  ];
  for (const [what, messageHeaders, messageBody, reason] of cases) {
    it(what, () => {
      let error: unknown;
      try {
        fromMessage(messageHeaders, messageBody);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(HeimdallError);
      expect({ code: (error as HeimdallError).code, retriable: isRetriable((error as HeimdallError).code) }).toEqual({ code: 'INVALID_EVENT', retriable: false });
      expect((error as HeimdallError).message).toMatch(reason);
    });
  }

  it('drops what it does not know, however deep, and keeps the event', () => {
    const parsed = fromMessage(Object.entries(headers), JSON.stringify({ ...event.data, extra: 0 }).replace('"extra":0', `"extra":${deep(100_000)}`));
    expect(parsed).toEqual(event);
  });

  it('any headers and body: an event or INVALID_EVENT', () => {
    const names = ['content-type', 'ce-specversion', 'ce-id', 'ce-type', 'ce-source', 'ce-time', 'ce-subject', 'ce-datacontenttype'];
    const value = (name: string) => fc.oneof(fc.string(), fc.constant(headers[name] ?? ''), fc.constantFrom(STRUCTURED_CONTENT_TYPE, 'application/json', '%', '%C3', 'constructor', '__proto__'));
    const messageHeaders = fc.uniqueArray(fc.constantFrom(...names), { maxLength: names.length }).chain((chosen) => fc.tuple(...chosen.map((name) => fc.tuple(fc.constant(name), value(name)))));
    const messageBody = fc.oneof(fc.string(), fc.json(), fc.constant(body), fc.constant(JSON.stringify(event)), fc.jsonValue().map((v) => JSON.stringify({ ...event, data: v })));
    fc.assert(
      fc.property(messageHeaders, messageBody, (h, b) => {
        try {
          fromMessage(h, b);
        } catch (error) {
          if (!(error instanceof HeimdallError) || error.code !== 'INVALID_EVENT') throw error;
        }
      }),
      { numRuns: 2000 },
    );
  });
});
