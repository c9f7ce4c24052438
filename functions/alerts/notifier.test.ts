import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryEventBus } from '../../shared/bus/memory.ts';
import type { AlertsConfig } from '../../shared/config/index.ts';
import { HeimdallError } from '../../shared/errors/index.ts';
import { failureEvent } from '../../shared/pipeline/failure.ts';
import { registeredEvent } from '../../test/support/events.ts';
import { attachSubscriber } from '../../shared/pipeline/subscriber.ts';
import { startWebhookReceiver } from '../../test/support/webhook-receiver.ts';
import { createAlerts } from './index.ts';
import { TokenBucket } from './token-bucket.ts';

/** A logger whose JSON lines the test can read. */
function capturedLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString('utf8')));
      done();
    },
  });
  return { logger: pino({ level: 'info' }, stream), lines };
}

const failure = (runId: string, stage: 'export' | 'parity' = 'export') => failureEvent(runId, stage, new HeimdallError('UNSAFE_PICKLE', 'refused global posix.system'));
const runIds = (n: number) => Array.from({ length: n }, (_, i) => i.toString(16).padStart(16, '0'));
const settings = (webhooks: string[], overrides: Partial<AlertsConfig> = {}): AlertsConfig => ({ webhooks, ratePerMinute: 20, retries: 3, backoffMs: 100, timeoutMs: 5_000, ...overrides });

const receivers: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  await Promise.all(receivers.splice(0).map((r) => r.close()));
});
async function receiver(script: ReadonlyArray<number | 'hang'> = []) {
  const r = await startWebhookReceiver(script);
  receivers.push(r);
  return r;
}

describe('alerts on an event bus (how `heimdall serve` attaches them)', () => {
  it('posts one Slack-compatible message per run and stage to every webhook', async () => {
    const [first, second] = [await receiver(), await receiver()];
    const { logger } = capturedLogger();
    const bus = new MemoryEventBus();
    const alerts = createAlerts(settings([`${first.url}/hooks/a`, `${second.url}/hooks/b`]), logger);
    attachSubscriber(bus, alerts);

    await bus.publish(failure('00000000000000aa'));
    // A redelivered stage fails again under the same run and stage: no second alert.
    alerts.accept(failureEvent('00000000000000aa', 'export', new HeimdallError('UNSAFE_PICKLE', 'refused global posix.system'), 2));
    await bus.close();
    await alerts.close(5_000);

    for (const r of [first, second]) {
      expect(r.requests).toHaveLength(1);
      expect(r.requests[0]).toMatchObject({ contentType: 'application/json', body: { text: 'Heimdall run 00000000000000aa failed at export: UNSAFE_PICKLE: refused global posix.system' } });
      expect(Object.keys(r.requests[0]!.body as object)).toEqual(['text']);
    }
    expect(first.requests[0]!.path).toBe('/hooks/a');
    expect(alerts.notifier.stats).toMatchObject({ delivered: 2, failed: 0, duplicates: 1 });
  });

  it('retries a webhook that answers 500, with exponential backoff, until it takes the alert', async () => {
    const webhook = await receiver([500, 500]);
    const { logger, lines } = capturedLogger();
    const alerts = createAlerts(settings([webhook.url], { backoffMs: 100 }), logger);

    alerts.accept(failure('00000000000000bb'));
    await alerts.close(5_000);

    expect(webhook.requests.map((r) => r.answer)).toEqual([500, 500, 200]);
    expect(new Set(webhook.requests.map((r) => JSON.stringify(r.body))).size).toBe(1);
    const [a, b, c] = webhook.requests.map((r) => r.at);
    expect(b! - a!).toBeGreaterThanOrEqual(95);
    expect(c! - b!).toBeGreaterThanOrEqual(195);
    expect(webhook.accepted()).toEqual(['Heimdall run 00000000000000bb failed at export: UNSAFE_PICKLE: refused global posix.system']);
    expect(lines.find((l) => l.msg === 'alert delivered')).toMatchObject({ attempts: 3, runId: '00000000000000bb', stage: 'export' });
  });

  it('gives up on an answer that will not change (404), and never logs the webhook secret', async () => {
    const webhook = await receiver([404]);
    const { logger, lines } = capturedLogger();
    const alerts = createAlerts(settings([`${webhook.url}/services/T000/B000/SECRET-TOKEN`]), logger);

    alerts.accept(failure('00000000000000cc'));
    await alerts.close(5_000);

    expect(webhook.requests).toHaveLength(1);
    expect(alerts.notifier.stats).toMatchObject({ delivered: 0, failed: 1 });
    expect(lines.find((l) => l.msg === 'alert not delivered')).toMatchObject({ reason: 'HTTP 404', attempts: 1, webhook: new URL(webhook.url).host });
    expect(JSON.stringify(lines)).not.toContain('SECRET-TOKEN');
  });

  it('rate limits a flood of 50 failures within a minute to the configured rate, and logs the drops once', async () => {
    const webhook = await receiver();
    const { logger, lines } = capturedLogger();
    const bus = new MemoryEventBus();
    const alerts = createAlerts(settings([webhook.url], { ratePerMinute: 10 }), logger);
    attachSubscriber(bus, alerts);

    for (const runId of runIds(50)) await bus.publish(failure(runId));
    await bus.close();
    await alerts.close(5_000);

    expect(webhook.requests).toHaveLength(10);
    expect(webhook.accepted()).toEqual(runIds(10).map((id) => expect.stringContaining(`Heimdall run ${id} failed at export`)));
    expect(alerts.notifier.stats).toMatchObject({ delivered: 10, rateLimited: 40 });
    const summaries = lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('alerts dropped'));
    expect(summaries).toEqual([expect.objectContaining({ rateLimited: 40, queueFull: 0, ratePerMinute: 10, msg: '40 alerts dropped (rate limit 10/min, queue 100)' })]);
  });

  it('never makes the pipeline wait: a webhook that hangs costs the publisher nothing, and shutdown waits only as long as it is told', async () => {
    const webhook = await receiver(Array(20).fill('hang'));
    const { logger, lines } = capturedLogger();
    const bus = new MemoryEventBus();
    const alerts = createAlerts(settings([webhook.url]), logger);
    attachSubscriber(bus, alerts);

    const publishing = performance.now();
    for (const runId of runIds(5)) await bus.publish(failure(runId));
    await bus.close();
    expect(performance.now() - publishing).toBeLessThan(100);

    await webhook.waitForRequests(1);
    const closing = performance.now();
    await alerts.close(300);
    expect(performance.now() - closing).toBeLessThan(2_000);
    expect(webhook.requests).toHaveLength(1);
    expect(alerts.notifier.stats).toMatchObject({ delivered: 0, failed: 1, abandoned: 4 });
    expect(lines.find((l) => l.msg === 'alerts left undelivered at shutdown')).toMatchObject({ queued: 4, timeoutMs: 300 });
  });
});

describe('alerts acknowledged after delivery (how the NATS runner uses them)', () => {
  it('settles an alert when the webhook took it; an alert it already took is done at once when offered again', async () => {
    const webhook = await receiver();
    const alerts = createAlerts(settings([webhook.url]), capturedLogger().logger);
    expect(await alerts.accept(failure('00000000000000d1'))).toEqual({ kind: 'done' });
    expect(webhook.requests).toHaveLength(1);
    // A redelivery after the ack was lost: no second post.
    expect(await alerts.accept(failure('00000000000000d1'))).toEqual({ kind: 'done' });
    expect(await alerts.accept(registeredEvent('00000000000000d1', '1'))).toEqual({ kind: 'done' });
    expect(webhook.requests).toHaveLength(1);
    await alerts.close(1000);
  });

  it('hands back an alert the webhook still refuses after its retries, the delay doubling on; offered again it is delivered once, on the same token', async () => {
    const webhook = await receiver([500, 500, 500, 500]);
    const alerts = createAlerts(settings([webhook.url], { retries: 1, backoffMs: 50, ratePerMinute: 1 }), capturedLogger().logger);
    // Retries wait 50 ms; the handbacks go on from there: 100 ms, then 200 ms.
    expect(await alerts.accept(failure('00000000000000d2'))).toEqual({ kind: 'later', delayMs: 100 });
    expect(await alerts.accept(failure('00000000000000d2'))).toEqual({ kind: 'later', delayMs: 200 });
    expect(await alerts.accept(failure('00000000000000d2'))).toEqual({ kind: 'done' });
    expect(webhook.requests.map((r) => r.answer)).toEqual([500, 500, 500, 500, 200]);
    // One token a minute, spent by the first offer: the redeliveries were no new alerts.
    expect(alerts.notifier.stats).toMatchObject({ delivered: 1, rateLimited: 0 });
    await alerts.close(1000);
  });

  it('offers a handed-back alert only to the webhooks that did not take it', async () => {
    const [up, down] = [await receiver(), await receiver([503])];
    const alerts = createAlerts(settings([up.url, down.url], { retries: 0, backoffMs: 10 }), capturedLogger().logger);
    expect(await alerts.accept(failure('00000000000000d3'))).toMatchObject({ kind: 'later' });
    expect(await alerts.accept(failure('00000000000000d3'))).toEqual({ kind: 'done' });
    expect([up.requests.length, down.requests.length]).toEqual([1, 2]);
    await alerts.close(1000);
  });

  it('is done with an alert a webhook refused for good (404) or the rate limit dropped: nothing to hand back', async () => {
    const webhook = await receiver([404]);
    const alerts = createAlerts(settings([webhook.url], { ratePerMinute: 1 }), capturedLogger().logger);
    expect(await alerts.accept(failure('00000000000000d4'))).toEqual({ kind: 'done' });
    expect(await alerts.accept(failure('00000000000000d5'))).toEqual({ kind: 'done' });
    expect(alerts.notifier.stats).toMatchObject({ failed: 1, rateLimited: 1 });
    await alerts.close(1000);
  });

  it('hands back, with no delay, what a stopping process has not delivered', async () => {
    const webhook = await receiver(['hang']);
    const alerts = createAlerts(settings([webhook.url]), capturedLogger().logger);
    const [inFlight, queued] = [alerts.accept(failure('00000000000000d6')), alerts.accept(failure('00000000000000d7'))];
    await webhook.waitForRequests(1);
    await alerts.close(100);
    expect(await inFlight).toEqual({ kind: 'later', delayMs: 0 });
    expect(await queued).toEqual({ kind: 'later', delayMs: 0 });
    expect(await alerts.accept(failure('00000000000000d8'))).toEqual({ kind: 'later', delayMs: 0 });
  });
});

describe('token bucket', () => {
  it('allows a burst of the per-minute rate, then one more per 60/rate seconds', () => {
    let now = 0;
    const bucket = new TokenBucket(3, () => now);
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
    now += 19_000;
    expect(bucket.take()).toBe(false);
    now += 1_000;
    expect([bucket.take(), bucket.take()]).toEqual([true, false]);
    now += 10 * 60_000;
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
  });
});
