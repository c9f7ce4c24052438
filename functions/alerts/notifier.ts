import { setTimeout as sleep } from 'node:timers/promises';
import { backoffDelayMs } from '../../shared/errors/retry.ts';
import type { AlertsConfig } from '../../shared/config/index.ts';
import type { Logger } from '../../shared/logging/index.ts';
import type { Alert } from './handler.ts';
import { TokenBucket } from './token-bucket.ts';

/** Alerts waiting for delivery at most: a webhook down for hours must not grow memory without bound. */
const QUEUE_LIMIT = 100;
/** Run/stage keys remembered for deduplication (oldest forgotten first). */
const DEDUPE_LIMIT = 10_000;
/** No retry waits longer, whatever the backoff or a Retry-After header says. */
const MAX_RETRY_DELAY_MS = 60_000;
/** Dropped alerts are logged as one summary line per this period, not one line each. */
const DROP_SUMMARY_MS = 60_000;

type DropReason = 'rateLimited' | 'queueFull';
type PostOutcome = { readonly ok: true } | { readonly ok: false; readonly retry: boolean; readonly reason: string; readonly retryAfterMs?: number };

/**
 * Posts alerts as Slack-compatible JSON (`{"text": ...}`) to every webhook. `notify` only queues:
 * delivery runs in the background, one alert at a time, with retries and exponential backoff, so
 * the pipeline never waits for a webhook. One alert per run and stage; a token bucket caps the rate.
 */
export class WebhookNotifier {
  /** Deliveries count once per alert and webhook; drops and duplicates once per alert. */
  readonly stats = { delivered: 0, failed: 0, duplicates: 0, rateLimited: 0, queueFull: 0, abandoned: 0 };
  private readonly queue: Alert[] = [];
  private readonly seen = new Set<string>();
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

  /** Queues an alert and returns at once. */
  notify(alert: Alert): void {
    if (this.closed) return;
    if (this.seen.has(alert.key)) {
      this.stats.duplicates++;
      return;
    }
    this.seen.add(alert.key);
    if (this.seen.size > DEDUPE_LIMIT) this.seen.delete(this.seen.values().next().value!);
    if (!this.bucket.take()) return this.drop('rateLimited');
    if (this.queue.length >= QUEUE_LIMIT) return this.drop('queueFull');
    this.queue.push(alert);
    this.worker ??= this.drain();
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

  /** For shutdown: takes no more alerts, flushes for at most `timeoutMs`, then abandons the rest. */
  async close(timeoutMs: number): Promise<void> {
    this.closed = true;
    if (!(await this.flush(timeoutMs))) {
      this.stats.abandoned += this.queue.length;
      this.logger.warn({ queued: this.queue.length, timeoutMs }, 'alerts left undelivered at shutdown');
      this.queue.length = 0;
      this.stop.abort();
      await this.worker;
    }
    this.reportDrops();
  }

  private async drain(): Promise<void> {
    try {
      for (;;) {
        const alert = this.queue.shift();
        if (!alert) return;
        await Promise.all(this.options.webhooks.map((url) => this.deliver(url, alert)));
      }
    } finally {
      this.worker = undefined;
    }
  }

  private async deliver(url: string, alert: Alert): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.post(url, alert);
      if (outcome.ok) {
        this.stats.delivered++;
        this.logger.info({ webhook: hostOf(url), runId: alert.runId, stage: alert.stage, attempts: attempt }, 'alert delivered');
        return;
      }
      if (!outcome.retry || attempt > this.options.retries || this.stop.signal.aborted) {
        this.stats.failed++;
        this.logger.error({ webhook: hostOf(url), runId: alert.runId, stage: alert.stage, attempts: attempt, reason: outcome.reason }, 'alert not delivered');
        return;
      }
      const backoff = backoffDelayMs(attempt, this.options.backoffMs, MAX_RETRY_DELAY_MS);
      await sleep(Math.min(MAX_RETRY_DELAY_MS, Math.max(backoff, outcome.retryAfterMs ?? 0)), undefined, { signal: this.stop.signal }).catch(() => undefined);
    }
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

  private drop(reason: DropReason): void {
    this.stats[reason]++;
    this.unreported[reason]++;
    this.summaryTimer ??= setTimeout(() => this.reportDrops(), DROP_SUMMARY_MS).unref();
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

/** Webhook URLs carry their secret in the path (Slack): logs name the host only. */
function hostOf(url: string): string {
  return new URL(url).host;
}
