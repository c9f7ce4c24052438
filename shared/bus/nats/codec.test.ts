import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { CloudEvent as SdkEvent, HTTP } from 'cloudevents';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HeimdallError } from '../../errors/index.ts';
import { createEvent, inContext, runIdOf, type AnyCloudEvent } from '../../events/index.ts';
import { decodeEvent, encodeEvent } from './codec.ts';

const runId = runIdOf('cd'.repeat(32));
const event = createEvent('heimdall.checkpoint.created', {
  stage: 'ingest',
  source: 'heimdall/ingest',
  subject: 'runs/a b.pth',
  data: { bucket: 'heimdall-checkpoints', key: 'runs/a b.pth', size: 10, etag: 'e', runId },
});

const hdrs = (pairs: Record<string, string>): MsgHdrs => {
  const h = natsHeaders();
  for (const [name, value] of Object.entries(pairs)) h.set(name, value);
  return h;
};
const plain = (h: MsgHdrs | undefined): Record<string, string> => Object.fromEntries([...(h?.keys() ?? [])].map((name) => [name.toLowerCase(), h!.get(name)]));
const invalid = (headers: MsgHdrs | undefined, body: string, reason: RegExp, code = 'INVALID_EVENT') =>
  expect(() => decodeEvent(headers, body)).toThrowError(expect.objectContaining({ code, message: expect.stringMatching(reason) }));

describe('CloudEvents on NATS (the NATS protocol binding, as sdk-go reads and writes it)', () => {
  it('binary mode: ce-* attributes, ce-datacontenttype and content-type, data as the body; and back', () => {
    const { headers, body } = encodeEvent(event);
    expect(plain(headers)).toMatchObject({ 'ce-specversion': '1.0', 'ce-id': event.id, 'ce-type': event.type, 'ce-source': 'heimdall/ingest', 'ce-subject': 'runs/a%20b.pth', 'ce-datacontenttype': 'application/json', 'content-type': 'application/json' });
    expect(JSON.parse(body)).toEqual(event.data);
    expect(decodeEvent(headers, body)).toEqual(event);
  });

  it('binary mode reads the data content type from ce-datacontenttype (no content-type, as sdk-go writes), which wins over content-type', () => {
    const { 'content-type': _, ...attributes } = plain(encodeEvent(event).headers);
    const body = JSON.stringify(event.data);
    expect(decodeEvent(hdrs({ ...attributes, 'ce-datacontenttype': 'application/json; charset=utf-8' }), body)).toEqual(event);
    expect(decodeEvent(hdrs({ ...attributes, 'ce-datacontenttype': 'application/json', 'content-type': 'text/plain' }), body)).toEqual(event);
    invalid(hdrs({ ...attributes, 'ce-datacontenttype': 'text/plain', 'content-type': 'application/json' }), body, /unsupported data content-type text\/plain/, 'UNSUPPORTED_MEDIA_TYPE');
    // content-type alone, as before.
    expect(decodeEvent(hdrs({ ...attributes, 'content-type': 'application/json' }), body)).toEqual(event);
  });

  it('structured mode for any Content-Type starting application/cloudevents', () => {
    for (const contentType of ['application/cloudevents+json', 'application/cloudevents+json; charset=utf-8', 'application/cloudevents', 'application/cloudevents; charset=utf-8', 'Application/CloudEvents+JSON']) {
      expect(decodeEvent(hdrs({ 'Content-Type': contentType }), JSON.stringify(event)), contentType).toEqual(event);
    }
    invalid(hdrs({ 'content-type': 'application/cloudevents+avro' }), JSON.stringify(event), /unsupported event format application\/cloudevents\+avro/, 'UNSUPPORTED_MEDIA_TYPE');
    invalid(hdrs({ 'content-type': 'application/cloudevents-batch+json' }), JSON.stringify([event]), /unsupported event format/, 'UNSUPPORTED_MEDIA_TYPE');
    // Binary data in a structured event: not JSON data, so not ours (a worker terminates it, as any invalid message).
    const { data: _data, ...attributes } = event;
    invalid(hdrs({ 'content-type': 'application/cloudevents+json' }), JSON.stringify({ ...attributes, data_base64: 'AAEC' }), /unsupported data_base64/, 'UNSUPPORTED_MEDIA_TYPE');
  });

  it('the distributed-tracing extension: ce-traceparent/ce-tracestate in binary mode, attributes in structured mode', () => {
    const traced = inContext(event, { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', tracestate: 'rojo=1' });
    const { headers, body } = encodeEvent(traced);
    expect(plain(headers)).toMatchObject({ 'ce-traceparent': traced.traceparent, 'ce-tracestate': 'rojo=1' });
    expect(decodeEvent(headers, body)).toEqual(traced);
    expect(decodeEvent(undefined, JSON.stringify(traced))).toEqual(traced);
    expect(decodeEvent(hdrs({ 'content-type': 'application/cloudevents' }), JSON.stringify(traced))).toEqual(traced);
  });

  it('a header-less JSON CloudEvent is structured mode (sdk-go JetStream writer), with or without other NATS headers', () => {
    expect(decodeEvent(undefined, JSON.stringify(event))).toEqual(event);
    expect(decodeEvent(natsHeaders(), JSON.stringify(event))).toEqual(event);
    expect(decodeEvent(hdrs({ 'Nats-Msg-Id': event.id }), JSON.stringify(event))).toEqual(event);
  });

  it('a header-less message that is not a CloudEvent is INVALID_EVENT, however much it looks like a run', () => {
    invalid(undefined, JSON.stringify(event.data), /no ce-specversion header/);
    invalid(undefined, JSON.stringify({ runId, data: { runId } }), /no ce-specversion header/);
    invalid(undefined, 'not json', /no ce-specversion header/);
    invalid(undefined, '[{"specversion":"1.0"}]', /no ce-specversion header/);
    invalid(undefined, JSON.stringify({ ...event, specversion: '0.3' }), /specversion/);
    invalid(undefined, JSON.stringify({ ...event, data: { ...event.data, size: -1 } }), /size/);
    // With a data content type it is a binary-mode message without attributes, not a structured one.
    invalid(hdrs({ 'content-type': 'application/json' }), JSON.stringify(event), /no ce-specversion header/);
  });

  it('any headers and body: an event, INVALID_EVENT or UNSUPPORTED_MEDIA_TYPE', () => {
    const names = ['content-type', 'Content-Type', 'ce-specversion', 'ce-id', 'ce-type', 'ce-source', 'ce-time', 'ce-datacontenttype', 'Nats-Msg-Id'];
    const binary = plain(encodeEvent(event).headers);
    const value = (name: string) => fc.oneof(fc.string(), fc.constant(binary[name.toLowerCase()] ?? ''), fc.constantFrom('application/cloudevents', 'application/cloudevents+json', 'application/cloudevents+xml', 'application/json', 'text/plain', '1.0'));
    const messageHeaders = fc.option(fc.uniqueArray(fc.constantFrom(...names), { maxLength: names.length }).chain((chosen) => fc.tuple(...chosen.map((name) => fc.tuple(fc.constant(name), value(name))))), { nil: undefined });
    const messageBody = fc.oneof(fc.string(), fc.json(), fc.constant(JSON.stringify(event.data)), fc.constant(JSON.stringify(event)), fc.jsonValue().map((v) => JSON.stringify({ ...event, data: v })));
    fc.assert(
      fc.property(messageHeaders, messageBody, (h, b) => {
        try {
          decodeEvent(h && hdrs(Object.fromEntries(h)), b);
        } catch (error) {
          if (!(error instanceof HeimdallError) || (error.code !== 'INVALID_EVENT' && error.code !== 'UNSUPPORTED_MEDIA_TYPE')) throw error;
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('interoperability with the official CloudEvents SDK (cloudevents on npm)', () => {
  const expected: AnyCloudEvent = {
    specversion: '1.0',
    id: `${runId}.ingest`,
    type: 'heimdall.checkpoint.created',
    source: 'trainer/sdk',
    subject: 'runs/epoch-3.pth',
    time: '2026-11-27T10:00:00.000Z',
    // The SDK's distributed-tracing extension attributes.
    traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    tracestate: 'rojo=00f067aa0ba902b7',
    datacontenttype: 'application/json',
    data: { bucket: 'heimdall-checkpoints', key: 'runs/epoch-3.pth', size: 42, etag: 'abc', runId },
  };
  // The same attributes, built by the SDK.
  const sdkEvent = new SdkEvent({ ...expected });
  const asString = (body: unknown) => (typeof body === 'string' ? body : JSON.stringify(body));

  it('decodes the SDK structured message (its headers as NATS headers)', () => {
    const message = HTTP.structured(sdkEvent);
    expect(message.headers['content-type']).toMatch(/^application\/cloudevents\+json/);
    expect(decodeEvent(hdrs(message.headers as Record<string, string>), asString(message.body))).toEqual(expected);
  });

  it('decodes the SDK event JSON sent without headers, and with Content-Type application/cloudevents', () => {
    const payload = JSON.stringify(sdkEvent.toJSON());
    expect(decodeEvent(undefined, payload)).toEqual(expected);
    expect(decodeEvent(hdrs({ 'content-type': 'application/cloudevents; charset=utf-8' }), payload)).toEqual(expected);
  });

  it('decodes the SDK binary message, with content-type or (as sdk-go on NATS) ce-datacontenttype', () => {
    const message = HTTP.binary(sdkEvent);
    const headers = message.headers as Record<string, string>;
    expect(decodeEvent(hdrs(headers), asString(message.body))).toEqual(expected);
    const { 'content-type': dataContentType, ...attributes } = headers;
    expect(decodeEvent(hdrs({ ...attributes, 'ce-datacontenttype': dataContentType! }), asString(message.body))).toEqual(expected);
  });

  it('our binary message parses with the SDK, every attribute kept', () => {
    const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', subject: 'runs/epoch-3.pth', data: expected.data as never });
    const ours = inContext(created, { traceparent: expected.traceparent!, tracestate: expected.tracestate! });
    const { headers, body } = encodeEvent(ours);
    const parsed = HTTP.toEvent({ headers: plain(headers), body }) as SdkEvent;
    expect(parsed).toMatchObject({ specversion: '1.0', id: ours.id, type: ours.type, source: ours.source, subject: ours.subject, time: ours.time, traceparent: ours.traceparent, tracestate: ours.tracestate, datacontenttype: 'application/json', data: ours.data });
    // And the SDK's structured rendering of what it parsed comes back to us as the same event.
    const again = HTTP.structured(parsed);
    expect(decodeEvent(hdrs(again.headers as Record<string, string>), asString(again.body))).toEqual(ours);
  });
});
