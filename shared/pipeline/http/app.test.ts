/**
 * A Knative function's follow-ups: its reply is one event, so what follows from a result (the
 * promotion a registration implies) goes to the Broker at K_SINK, before the reply; a Broker that
 * does not take it fails the request, so the Broker delivers the event again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/support/temp.ts';
import { registerStage } from '../../../test/support/events.ts';
import { startWebhookReceiver } from '../../../test/support/webhook-receiver.ts';
import { loadConfig } from '../../config/index.ts';
import { createEvent, fromMessage, runIdOf, toBinary, type AnyCloudEvent } from '../../events/index.ts';
import { createLogger } from '../../logging/index.ts';
import { createAdapters } from '../adapters.ts';
import type { AnyStage } from '../stage.ts';
import { createFunctionApp } from './app.ts';

const runId = runIdOf('ab'.repeat(32));
const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'k.pth', size: 1, etag: 'e', runId } });

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

function post(stage: AnyStage, sink?: string): Promise<Response> {
  const config = loadConfig({ HEIMDALL_DATA_DIR: dir, ...(sink ? { K_SINK: sink } : {}) });
  const app = createFunctionApp(stage, { ...createAdapters(config), config, logger: createLogger('silent'), scratchDir: dir });
  const { headers, body } = toBinary(created);
  return Promise.resolve(app.request('/', { method: 'POST', headers, body }));
}
const reply = async (response: Response): Promise<AnyCloudEvent> => fromMessage(response.headers, await response.text());

describe('an HTTP function with K_SINK', () => {
  it('posts the promotion a registration implies to the sink, then replies with the registration', async () => {
    const response = await post(registerStage(true), `${broker.url}/broker`);
    expect(response.status).toBe(200);
    expect((await reply(response)).type).toBe('heimdall.model.registered');
    expect(broker.requests).toHaveLength(1);
    expect(broker.requests[0]).toMatchObject({ path: '/broker', body: { runId, name: 'heimdall-localization', version: '2', alias: 'staging', previous: '1', reason: 'gate passed' } });
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
