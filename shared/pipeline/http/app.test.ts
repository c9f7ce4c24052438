/**
 * A Knative function's follow-ups: its reply is one event, so what follows from a result (the
 * promotion a registration implies) goes to the Broker at K_SINK, before the reply; a Broker that
 * does not take it fails the request, so the Broker delivers the event again. And what a function
 * does with trace context and with data that is not JSON.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/support/temp.ts';
import { registerStage } from '../../../test/support/events.ts';
import { startWebhookReceiver } from '../../../test/support/webhook-receiver.ts';
import { loadConfig } from '../../config/index.ts';
import { HeimdallError } from '../../errors/index.ts';
import { createEvent, fromHttp, inContext, parseTraceparent, runIdOf, toBinary, type AnyCloudEvent } from '../../events/index.ts';
import { createLogger } from '../../logging/index.ts';
import { createAdapters } from '../adapters.ts';
import type { AnyStage } from '../stage.ts';
import { createFunctionApp } from './app.ts';

const runId = runIdOf('ab'.repeat(32));
const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
const ingestSpan = '00f067aa0ba902b7';
const created = inContext(createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'k.pth', size: 1, etag: 'e', runId } }), {
  traceparent: `00-${traceId}-${ingestSpan}-01`,
  tracestate: 'rojo=1',
  subject: 'k.pth',
});

let dir: string;
let broker: Awaited<ReturnType<typeof startWebhookReceiver>>;
beforeAll(async () => {
  dir = await tempDir('heimdall-function-app-');
  // Stands in for the Knative Broker's ingress: the first post fails, the rest are taken.
  broker = await startWebhookReceiver([200, 503]);
});
afterAll(async () => {
  await broker?.close();
});

async function appFor(stage: AnyStage, sink?: string) {
  const config = loadConfig({ HEIMDALL_DATA_DIR: dir, ...(sink ? { K_SINK: sink } : {}) });
  return createFunctionApp(stage, { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: dir });
}
async function post(stage: AnyStage, sink?: string): Promise<Response> {
  const { headers, body } = toBinary(created);
  return Promise.resolve((await appFor(stage, sink)).request('/', { method: 'POST', headers, body }));
}
const reply = async (response: Response): Promise<AnyCloudEvent> => fromHttp(response.headers, await response.text());

describe('an HTTP function with K_SINK', () => {
  it('posts the promotion a registration implies to the sink, then replies with the registration', async () => {
    const response = await post(registerStage(true), `${broker.url}/broker`);
    expect(response.status).toBe(200);
    expect((await reply(response)).type).toBe('heimdall.model.registered');
    expect(broker.requests).toHaveLength(1);
    expect(broker.requests[0]).toMatchObject({ path: '/broker', body: { runId, name: 'heimdall-localization', version: '2', alias: 'staging', previous: '1', reason: 'gate passed' } });
    // In the registration's trace and span, as the W3C headers and the extension.
    const promotedTrace = broker.requests[0]!.headers['ce-traceparent'];
    expect(promotedTrace).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    expect(broker.requests[0]!.headers).toMatchObject({ traceparent: promotedTrace, tracestate: 'rojo=1', 'ce-tracestate': 'rojo=1' });
  });

  it('fails the request when the sink refuses the follow-up, so the Broker delivers the event again', async () => {
    const response = await post(registerStage(true), `${broker.url}/broker`);
    expect(response.status).toBe(500);
    expect(broker.requests.map((r) => r.answer)).toEqual([200, 503]);
  });

  it('posts nothing when the result implies nothing, or when there is no sink (the local broker announces follow-ups then)', async () => {
    const before = broker.requests.length;
    expect((await post(registerStage(false), `${broker.url}/broker`)).status).toBe(200);
    expect((await post(registerStage(true))).status).toBe(200);
    expect(broker.requests).toHaveLength(before);
  });
});

describe('trace context over HTTP', () => {
  const exportStage = (handler: AnyStage['handler']): AnyStage => ({ name: 'export', input: 'heimdall.checkpoint.created', output: 'heimdall.model.exported', handler });
  const failing = exportStage(async () => Promise.reject(new HeimdallError('CHECKPOINT_CORRUPT', 'CRC mismatch')));

  it("continues the event's trace in the reply: same trace id, a new span, tracestate and subject kept; as W3C headers too", async () => {
    const response = await post(registerStage(false));
    const event = await reply(response);
    const fields = parseTraceparent(event.traceparent!);
    expect(fields).toMatchObject({ version: '00', traceId, flags: '01' });
    expect(fields?.parentId).not.toBe(ingestSpan);
    expect({ tracestate: event.tracestate, subject: event.subject }).toEqual({ tracestate: 'rojo=1', subject: 'k.pth' });
    expect({ traceparent: response.headers.get('traceparent'), tracestate: response.headers.get('tracestate') }).toEqual({ traceparent: event.traceparent, tracestate: 'rojo=1' });
  });

  it("takes the trace from Knative's W3C traceparent header when the event carries none", async () => {
    const { traceparent: _traceparent, tracestate: _tracestate, ...untraced } = created;
    const { headers, body } = toBinary(untraced);
    const response = await (await appFor(registerStage(false))).request('/', { method: 'POST', headers: { ...headers, traceparent: `00-${'ab'.repeat(16)}-${'cd'.repeat(8)}-00` }, body });
    expect(parseTraceparent((await reply(response)).traceparent!)).toMatchObject({ traceId: 'ab'.repeat(16), flags: '00' });
  });

  it('a failure continues the trace as a result would', async () => {
    const { headers, body } = toBinary(created);
    const response = await (await appFor(failing)).request('/', { method: 'POST', headers, body });
    const event = await reply(response);
    expect(event).toMatchObject({ type: 'heimdall.pipeline.failed', subject: 'k.pth', tracestate: 'rojo=1', data: { error: { code: 'CHECKPOINT_CORRUPT' } } });
    expect(parseTraceparent(event.traceparent!)?.traceId).toBe(traceId);
    expect(response.headers.get('traceparent')).toBe(event.traceparent);
  });

  it('an event without any trace context starts a trace', async () => {
    const { traceparent: _traceparent, tracestate: _tracestate, ...untraced } = created;
    const { headers, body } = toBinary(untraced);
    const event = await reply(await (await appFor(registerStage(false))).request('/', { method: 'POST', headers, body }));
    expect(parseTraceparent(event.traceparent!)?.traceId).not.toBe(traceId);
  });
});

describe('data that is not JSON over HTTP', () => {
  it('answers 415 Unsupported Media Type naming what was sent: data_base64, another datacontenttype or content-type, another event format', async () => {
    const app = await appFor(registerStage(false));
    const { data: _data, ...attributes } = created;
    const { headers, body } = toBinary(created);
    const cases = [
      { headers: { 'content-type': 'application/cloudevents+json' }, body: JSON.stringify({ ...attributes, datacontenttype: 'application/octet-stream', data_base64: 'AAEC' }), sent: 'data_base64 (binary data)' },
      { headers: { 'content-type': 'application/cloudevents+json' }, body: JSON.stringify({ ...created, datacontenttype: 'text/xml' }), sent: 'datacontenttype text/xml' },
      { headers: { ...headers, 'content-type': 'text/plain' }, body, sent: 'data content-type text/plain' },
      { headers: { 'content-type': 'application/cloudevents+protobuf' }, body: 'x', sent: 'event format application/cloudevents+protobuf' },
    ];
    for (const request of cases) {
      const response = await app.request('/', { method: 'POST', headers: request.headers, body: request.body });
      expect({ sent: request.sent, status: response.status }).toEqual({ sent: request.sent, status: 415 });
      expect(await response.json()).toEqual({ error: { code: 'UNSUPPORTED_MEDIA_TYPE', message: expect.stringContaining(`unsupported ${request.sent}: Heimdall events carry JSON data`) } });
    }
    // What is JSON but no valid event stays a 400.
    expect((await app.request('/', { method: 'POST', headers, body: '{}' })).status).toBe(400);
  });
});
