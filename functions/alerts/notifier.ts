import { setTimeout as sleep } from 'node:timers/promises';
import { backoffDelayMs } from '../../shared/errors/retry.ts';
import type { AlertsConfig } from '../../shared/config/index.ts';
import type { Logger } from '../../shared/logging/index.ts';
import type { Handled } from '../../shared/pipeline/subscriber.ts';
import type { Alert } from './handler.ts';
import { TokenBucket } from './token-bucket.ts';

/** Alerts waiting for delivery at most: a webhook down for hours must not grow memory without bound. */
const QUEUE_LIMIT = 100;
/** Run/stage keys remembered for deduplication (oldest forgotten first). */
const DEDUPE_LIMIT = 10_000;
/** No retry waits longer, whatever the backoff or a Retry-After header says; nor does an alert handed back. */
const MAX_RETRY_DELAY_MS = 60_000;
const MAX_HANDBACK_DELAY_MS = 10 * 60_000;
/** Dropped alerts are logged as one summary line per this period, not one line each. */
const DROP_SUMMARY_MS = 60_000;

const DONE: Handled = { kind: 'done' };
/** Left undelivered by a stopping process: offered again at once, to whichever process takes it. */
const HANDED_BACK: Handled = { kind: 'later', delayMs: 0 };

type DropReason = 'rateLimited' | 'queueFull';
type PostOutcome = { readonly ok: true } | { readonly ok: false; readonly retry: boolean; readonly reason: string; readonly retryAfterMs?: number };
type Delivery = 'delivered' | 'refused' | 'undelivered';

interface Queued {
  readonly alert: Alert;
  readonly settle: (handled: Handled) => void;
}

/**
 * Posts alerts as Slack-compatible JSON (`{"text": ...}`) to every webhook. `notify` only queues:
 * delivery runs in the background, one alert at a time, with retries and exponential backoff, so
 * the pipeline never waits for a webhook; its promise says when the alert is done with, for a
 * runner that acknowledges it only then. One alert per run and stage; a token bucket caps the rate.
 *
 * After its retries an alert a webhook still did not take (network error, timeout, 429, 5xx) is
 * handed back (`later`), with a delay that goes on doubling from the last retry's (at most 10
 * minutes), so a webhook down for long gets one try per alert every so often, not a storm. Offered
 * again, it goes only to the webhooks that have not taken it, and takes no second token.
 */
export class WebhookNotifier {
  /** Deliveries count once per alert and webhook and try (`failed`: a try that ended without the webhook taking it); drops and duplicates once per alert. */
  readonly stats = { delivered: 0, failed: 0, duplicates: 0, rateLimited: 0, queueFull: 0, abandoned: 0 };
  private readonly queue: Queued[] = [];
  /** Alerts queued or being delivered, by key: the same alert offered meanwhile waits for the same outcome. */
  private readonly pending = new Map<string, Promise<Handled>>();
  /** Keys done with: delivered everywhere, refused for good, or dropped. */
  private readonly finished = new Set<string>();
  /** Keys that took their token; webhooks (`key`, url) that took their alert; handbacks so far. Forgotten once the key is finished. */
  private readonly admitted = new Set<string>();
  private readonly taken = new Set<string>();
  private readonly handbacks = new Map<string, number>();
  private readonly bucket: TokenBucket;
  private readonly stop = new AbortController();
  private worker: Promise<void> | undefined;
  private closed = false;
  private unreported: Record<DropReason, number> = { rateLimited: 0, queueFull: 0 };
  private summaryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: AlertsConfig,
    private readonly logger: Logger,
  ) {
    this.bucket = new TokenBucket(options.ratePerMinute);
  }

  /** Queues an alert and returns at once; the promise settles when it is done with, or handed back. */
  notify(alert: Alert): Promise<Handled> {
    if (this.closed) return Promise.resolve(HANDED_BACK);
    const inFlight = this.pending.get(alert.key);
    if (this.finished.has(alert.key) || inFlight) {
      this.stats.duplicates++;
      return inFlight ?? Promise.resolve(DONE);
    }
    if (!this.admitted.has(alert.key)) {
      if (!this.bucket.take()) return this.drop(alert.key, 'rateLimited');
      this.admitted.add(alert.key);
    }
    if (this.queue.length >= QUEUE_LIMIT) return this.drop(alert.key, 'queueFull');
    const handled = new Promise<Handled>((settle) => this.queue.push({ alert, settle }));
    this.pending.set(alert.key, handled);
    this.worker ??= this.drain();
    return handled;
  }

  /** Waits at most `timeoutMs` for the queue to empty; true when it did. */
  async flush(timeoutMs: number): Promise<boolean> {
    if (!this.worker) return true;
    const timer = new AbortController();
    try {
      return await Promise.race([this.worker.then(() => true), sleep(timeoutMs, false, { signal: timer.signal })]);
    } finally {
      timer.abort();
    }
  }

  /** For shutdown: takes no more alerts, flushes for at most `timeoutMs`, then hands back the rest. */
  async close(timeoutMs: number): Promise<void> {
    this.closed = true;
    if (!(await this.flush(timeoutMs))) {
      this.stats.abandoned += this.queue.length;
      this.logger.warn({ queued: this.queue.length, timeoutMs }, 'alerts left undelivered at shutdown');
      for (const { alert, settle } of this.queue.splice(0)) {
        this.pending.delete(alert.key);
        settle(HANDED_BACK);
      }
      this.stop.abort();
      await this.worker;
    }
    this.reportDrops();
  }

  private async drain(): Promise<void> {
    try {
      for (;;) {
        const next = this.queue.shift();
        if (!next) return;
        const { alert, settle } = next;
        const waiting = this.options.webhooks.filter((url) => !this.taken.has(pair(alert.key, url)));
        // deliver() turns every failure into an outcome; should it not, the alert is handed back, never left unsettled.
        const deliveries = await Promise.all(waiting.map((url) => this.deliver(url, alert))).catch((): Delivery[] => ['undelivered']);
        this.pending.delete(alert.key);
        if (!deliveries.includes('undelivered')) {
          this.finish(alert.key);
          settle(DONE);
        } else if (this.stop.signal.aborted) settle(HANDED_BACK);
        else settle({ kind: 'later', delayMs: this.handback(alert.key) });
      }
    } finally {
      this.worker = undefined;
    }
  }

  private async deliver(url: string, alert: Alert): Promise<Delivery> {
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.post(url, alert);
      if (outcome.ok) {
        this.stats.delivered++;
        this.taken.add(pair(alert.key, url));
        this.logger.info({ webhook: hostOf(url), runId: alert.runId, stage: alert.stage, attempts: attempt }, 'alert delivered');
        return 'delivered';
      }
      if (!outcome.retry || attempt > this.options.retries || this.stop.signal.aborted) {
        this.stats.failed++;
        this.logger.error({ webhook: hostOf(url), runId: alert.runId, stage: alert.stage, attempts: attempt, reason: outcome.reason, retriable: outcome.retry }, 'alert not delivered');
        return outcome.retry ? 'undelivered' : 'refused';
      }
      const backoff = backoffDelayMs(attempt, this.options.backoffMs, MAX_RETRY_DELAY_MS);
      await sleep(Math.min(MAX_RETRY_DELAY_MS, Math.max(backoff, outcome.retryAfterMs ?? 0)), undefined, { signal: this.stop.signal }).catch(() => undefined);
    }
  }

  /** The delay before an alert handed back is offered again: the retries' backoff, doubling on from the last one's. */
  private handback(key: string): number {
    const round = (this.handbacks.get(key) ?? 0) + 1;
    this.handbacks.set(key, round);
    return backoffDelayMs(this.options.retries + round, this.options.backoffMs, MAX_HANDBACK_DELAY_MS);
  }

  private finish(key: string): void {
    this.finished.add(key);
    if (this.finished.size > DEDUPE_LIMIT) this.finished.delete(this.finished.values().next().value!);
    this.admitted.delete(key);
    this.handbacks.delete(key);
    for (const url of this.options.webhooks) this.taken.delete(pair(key, url));
  }

  private async post(url: string, alert: Alert): Promise<PostOutcome> {
    try {
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ text: alert.text }),
        signal: AbortSignal.any([this.stop.signal, AbortSignal.timeout(this.options.timeoutMs)]),
      });
      // The answer's body is not needed; reading it off frees the connection for the next alert.
      await response.arrayBuffer().catch(() => undefined);
      if (response.ok) return { ok: true };
      // 429 and 5xx are the webhook's passing trouble; any other status will not change on a retry.
      const retryAfter = Number(response.headers.get('retry-after'));
      return { ok: false, retry: response.status === 429 || response.status >= 500, reason: `HTTP ${response.status}`, ...(retryAfter > 0 ? { retryAfterMs: retryAfter * 1000 } : {}) };
    } catch (error) {
      // Network errors and timeouts: worth another try.
      const cause = (error as { cause?: { code?: string } }).cause?.code;
      return { ok: false, retry: true, reason: cause ?? (error as Error).message };
    }
  }

  /** Dropped by design (rate limit, full queue): done with, counted, summarized in the log. */
  private drop(key: string, reason: DropReason): Promise<Handled> {
    this.finish(key);
    this.stats[reason]++;
    this.unreported[reason]++;
    this.summaryTimer ??= setTimeout(() => this.reportDrops(), DROP_SUMMARY_MS).unref();
    return Promise.resolve(DONE);
  }

  private reportDrops(): void {
    clearTimeout(this.summaryTimer);
    this.summaryTimer = undefined;
    const { rateLimited, queueFull } = this.unreported;
    if (rateLimited + queueFull === 0) return;
    this.logger.warn({ rateLimited, queueFull, ratePerMinute: this.options.ratePerMinute }, `${rateLimited + queueFull} alerts dropped (rate limit ${this.options.ratePerMinute}/min, queue ${QUEUE_LIMIT})`);
    this.unreported = { rateLimited: 0, queueFull: 0 };
  }
}

/** A webhook that took an alert, as `taken` remembers it. */
const pair = (key: string, url: string) => `${key}\n${url}`;

/** Webhook URLs carry their secret in the path (Slack): logs name the host only. */
function hostOf(url: string): string {
  return new URL(url).host;
}
