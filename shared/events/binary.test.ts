import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HeimdallError, isRetriable } from '../errors/index.ts';
import { createEvent, inContext, runIdOf } from './index.ts';
import { fromHttp, fromMessage, STRUCTURED_CONTENT_TYPE, toBinary, toHttp } from './binary.ts';

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

  const traced = inContext(event, { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', tracestate: 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE' });

  it('the distributed-tracing extension: ce-traceparent and ce-tracestate in binary mode, top-level attributes in structured mode', () => {
    const { headers, body } = toBinary(traced);
    expect(headers).toMatchObject({ 'ce-traceparent': traced.traceparent, 'ce-tracestate': 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE' });
    expect(fromMessage(Object.entries(headers), body)).toEqual(traced);
    const structured = JSON.parse(JSON.stringify(traced));
    expect(structured).toMatchObject({ traceparent: traced.traceparent, tracestate: traced.tracestate });
    expect(fromMessage([['content-type', STRUCTURED_CONTENT_TYPE]], JSON.stringify(structured))).toEqual(traced);
  });

  it('an invalid traceparent is dropped with its tracestate, and the event kept (the receiver restarts the trace)', () => {
    const { headers, body } = toBinary(traced);
    const parsed = fromMessage(Object.entries({ ...headers, 'ce-traceparent': '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01' }), body);
    expect(parsed).toEqual(event);
    expect(parsed).not.toHaveProperty('traceparent');
    expect(parsed).not.toHaveProperty('tracestate');
    // A tracestate that breaks its grammar goes alone; the traceparent stays.
    expect(fromMessage(Object.entries({ ...headers, 'ce-tracestate': 'Not A Key=1' }), body)).toEqual({ ...event, traceparent: traced.traceparent });
  });

  it('over HTTP the W3C traceparent/tracestate headers give the trace of an event that carries none; the extension wins; replies carry both', () => {
    const w3c = { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', tracestate: 'knative=1' };
    const plain = toBinary(event);
    expect(fromHttp(new Headers({ ...plain.headers, ...w3c }), plain.body)).toEqual({ ...event, ...w3c });
    expect(fromHttp(new Headers({ 'content-type': STRUCTURED_CONTENT_TYPE, ...w3c }), JSON.stringify(event))).toEqual({ ...event, ...w3c });
    const withExtension = toBinary(traced);
    expect(fromHttp(new Headers({ ...withExtension.headers, ...w3c }), withExtension.body)).toEqual(traced);
    // An invalid W3C header is no trace either.
    expect(fromHttp(new Headers({ ...plain.headers, traceparent: '00-00000000000000000000000000000000-b7ad6b7169203331-01', tracestate: 'knative=1' }), plain.body)).toEqual(event);

    const { headers } = toHttp(traced);
    expect(headers).toMatchObject({ traceparent: traced.traceparent, tracestate: traced.tracestate, 'ce-traceparent': traced.traceparent, 'ce-tracestate': traced.tracestate });
    expect(toHttp(event).headers).not.toHaveProperty('traceparent');
  });

  it('data that is not JSON, or an event format other than JSON, is UNSUPPORTED_MEDIA_TYPE naming what was sent', () => {
    const { headers, body } = toBinary(event);
    const unsupported = (h: Iterable<readonly [string, string]>, b: string, sent: string) =>
      expect(() => fromMessage(h, b)).toThrowError(expect.objectContaining({ code: 'UNSUPPORTED_MEDIA_TYPE', message: expect.stringContaining(`unsupported ${sent}: Heimdall events carry JSON data`) }));
    unsupported(Object.entries({ ...headers, 'content-type': 'text/plain' }), body, 'data content-type text/plain');
    unsupported(Object.entries({ ...headers, 'content-type': 'application/octet-stream' }), body, 'data content-type application/octet-stream');
    const structured = [['content-type', STRUCTURED_CONTENT_TYPE]] as const;
    const { data: _data, ...attributes } = event;
    unsupported(structured, JSON.stringify({ ...attributes, datacontenttype: 'application/octet-stream', data_base64: 'AAEC' }), 'data_base64 (binary data)');
    unsupported(structured, JSON.stringify({ ...attributes, data_base64: Buffer.from(JSON.stringify(event.data)).toString('base64') }), 'data_base64 (binary data)');
    unsupported(structured, JSON.stringify({ ...event, datacontenttype: 'text/csv' }), 'datacontenttype text/csv');
    unsupported([['content-type', 'application/cloudevents+avro']], JSON.stringify(event), 'event format application/cloudevents+avro');
    unsupported([['content-type', 'application/cloudevents-batch+json']], JSON.stringify([event]), 'event format application/cloudevents-batch+json');
    // What it echoes of the sender's text is bounded.
    expect(() => fromMessage(Object.entries({ ...headers, 'content-type': `text/${'x'.repeat(10_000)}` }), body)).toThrowError(expect.objectContaining({ message: expect.stringMatching(/^unsupported data content-type text\/x{95}\.\.\.: /) }));
    // JSON in any of its media types is JSON: `+json` types, parameters, any case; structured as application/cloudevents too.
    for (const type of ['application/json; charset=utf-8', 'Application/JSON', 'application/vnd.heimdall+json']) expect(fromMessage(Object.entries({ ...headers, 'content-type': type }), body), type).toEqual(event);
    expect(fromMessage([['content-type', 'application/cloudevents; charset=utf-8']], JSON.stringify({ ...event, datacontenttype: 'application/ld+json' }))).toEqual(event);
  });

  it('reject what is not a CloudEvent, with the reason', () => {
    expect(() => fromMessage([], '{}')).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/ce-specversion/) }));
    expect(() => fromMessage(Object.entries(toBinary(event).headers), 'not json')).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: 'event data is not JSON' }));
    const { headers } = toBinary(event);
    expect(() => fromMessage(Object.entries(headers), JSON.stringify({ ...event.data, size: -1 }))).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/size/) }));
  });
});

describe('what a transport may deliver: every message that is not a valid event is INVALID_EVENT (UNSUPPORTED_MEDIA_TYPE for data that is not JSON), never a crash', () => {
  const { headers, body } = toBinary(event);
  const structured = [['content-type', STRUCTURED_CONTENT_TYPE]] as const;
  const deep = (depth: number) => '['.repeat(depth) + ']'.repeat(depth);
  const cases: [string, Iterable<readonly [string, string]>, string, RegExp][] = [
    ['no headers, data only', [], body, /no ce-specversion header/],
    ['another spec version', Object.entries({ ...headers, 'ce-specversion': '0.3' }), body, /specversion/],
    ['a type named like an Object property', Object.entries({ ...headers, 'ce-type': 'constructor' }), body, /^unknown event type constructor$/],
    ['a header that is not percent-encoding', Object.entries({ ...headers, 'ce-subject': 'runs/%E0%A4%A.pth' }), body, /ce-subject is not valid percent-encoding/],
    ['a time that is no time', Object.entries({ ...headers, 'ce-time': 'yesterday' }), body, /time/],
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

  it('any headers and body: an event, INVALID_EVENT or UNSUPPORTED_MEDIA_TYPE', () => {
    const names = ['content-type', 'ce-specversion', 'ce-id', 'ce-type', 'ce-source', 'ce-time', 'ce-subject', 'ce-datacontenttype', 'ce-traceparent', 'ce-tracestate'];
    const value = (name: string) => fc.oneof(fc.string(), fc.constant(headers[name] ?? ''), fc.constantFrom(STRUCTURED_CONTENT_TYPE, 'application/json', 'text/plain', '%', '%C3', 'constructor', '__proto__', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'rojo=1,congo=2'));
    const messageHeaders = fc.uniqueArray(fc.constantFrom(...names), { maxLength: names.length }).chain((chosen) => fc.tuple(...chosen.map((name) => fc.tuple(fc.constant(name), value(name)))));
    const messageBody = fc.oneof(fc.string(), fc.json(), fc.constant(body), fc.constant(JSON.stringify(event)), fc.jsonValue().map((v) => JSON.stringify({ ...event, data: v })));
    fc.assert(
      fc.property(messageHeaders, messageBody, (h, b) => {
        try {
          fromMessage(h, b);
        } catch (error) {
          if (!(error instanceof HeimdallError) || (error.code !== 'INVALID_EVENT' && error.code !== 'UNSUPPORTED_MEDIA_TYPE')) throw error;
        }
      }),
      { numRuns: 2000 },
    );
  });
});
