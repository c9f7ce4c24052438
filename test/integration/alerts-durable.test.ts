/**
 * Alerts on NATS are acknowledged only once delivered: a `heimdall serve` process killed (SIGKILL)
 * while the webhook answers 500 leaves the alert unacknowledged, and the next process delivers it
 * once the webhook recovers. Real nats-server, real child processes, a real HTTP server standing in
 * for Slack.
 */
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NatsEventBus } from '../../shared/bus/nats/event-bus.ts';
import { EVENTS_STREAM } from '../../shared/bus/nats/subjects.ts';
import { HeimdallError } from '../../shared/errors/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { failureEvent } from '../../shared/pipeline/failure.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { startServe, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { tempDir } from '../support/temp.ts';
import { startWebhookReceiver } from '../support/webhook-receiver.ts';

let server: NatsServer;
let nc: NatsConnection;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
});
afterAll(async () => {
  await Promise.all(workers.map(stopServe));
  await nc?.close();
  await server?.stop();
});

const subscribersConsumer = async () => (await jetstreamManager(nc)).consumers.info(EVENTS_STREAM, 'heimdall-subscribers');

describe('an alerts process killed while the webhook answers 500', () => {
  it('leaves the alert unacknowledged; the next process hands it back while the webhook is down, then delivers it once', async () => {
    // Answers 500 while `down` holds statuses for it; emptying it is the webhook recovering.
    const down: number[] = Array(1000).fill(500);
    const webhook = await startWebhookReceiver(down);
    const env = {
      NATS_URL: server.url,
      HEIMDALL_DATA_DIR: join(await tempDir('heimdall-alerts-durable-'), 'data'),
      HEIMDALL_ACK_WAIT_SECONDS: '5',
      HEIMDALL_ALERT_WEBHOOKS: `${webhook.url}/hooks/heimdall`,
      HEIMDALL_ALERT_RETRIES: '3',
      HEIMDALL_ALERT_BACKOFF_MS: '300',
      HEIMDALL_RECONCILE_INTERVAL: 'off',
    };
    // Only the ingest worker and the alerts' subscriber run here: the alert is all there is to do.
    const serve = () => {
      const worker = startServe(env, ['--stages', 'ingest']);
      workers.push(worker);
      return waitFor('serve to start', () => worker.stderr().includes('serving') && worker, 60_000);
    };
    const first = await serve();
    const failure = failureEvent('0123456789abcdef', 'export', new HeimdallError('UNSAFE_PICKLE', 'refused global posix.system'));
    const bus = new NatsEventBus(nc, createLogger('silent'));
    await bus.publish(failure);

    // Mid-retry (the webhook answered 500 twice): killed.
    await webhook.waitForRequests(2, 30_000);
    first.child.kill('SIGKILL');
    expect(await first.exited).toBe('SIGKILL');
    const byFirst = webhook.requests.length;
    expect(webhook.accepted()).toEqual([]);
    expect((await subscribersConsumer()).num_ack_pending).toBe(1);

    // The next process gets it once the ack wait runs out; its retries fail too, and it hands it back with a delay instead of trying on.
    const second = await serve();
    await waitFor('the second process to hand the alert back', () => second.stderr().includes('alert not delivered'), 30_000);
    const round = webhook.requests.slice(byFirst);
    expect(round.map((r) => r.answer)).toEqual([500, 500, 500, 500]);
    const handedBackAt = performance.now();

    down.length = 0;
    await waitFor('the alert to be delivered', () => webhook.accepted().length > 0, 30_000);
    // Handed back for 2.4 s (the retries' 300, 600, 1200 ms, doubled on): no storm meanwhile.
    expect(webhook.requests.at(-1)!.at - round.at(-1)!.at).toBeGreaterThanOrEqual(2_300);
    expect(performance.now() - handedBackAt).toBeLessThan(15_000);
    await waitFor('the alert to be acknowledged', async () => (await subscribersConsumer()).num_ack_pending === 0, 30_000);

    expect(webhook.accepted()).toEqual(['Heimdall run 0123456789abcdef failed at export: UNSAFE_PICKLE: refused global posix.system']);
    expect(webhook.requests).toHaveLength(byFirst + round.length + 1);
    expect(webhook.requests.every((r) => r.path === '/hooks/heimdall')).toBe(true);
    expect(second.child.exitCode).toBeNull();
    await bus.close();
    await webhook.close();
  });
});
