import { setTimeout as sleep } from 'node:timers/promises';
import { JetStreamApiError } from '@nats-io/jetstream';
import { NoRespondersError, TimeoutError } from '@nats-io/transport-node';
import type { Logger } from '../../logging/index.ts';

/** "JetStream system temporarily unavailable" and "cluster can not handle request": no leader yet. */
const CLUSTER_UNAVAILABLE_CODES = new Set([10008, 10009]);

/**
 * Whether a JetStream request that failed may succeed when sent again: what a cluster answers while
 * it elects a leader or a server restarts. No responders (the stream or consumer has no leader to
 * take the request; a publish reports it as "jetstream is not enabled"), a timeout (the leader went away
 * with the request in flight), or the API's 503 / "temporarily unavailable". A refusal on the
 * merits (wrong last sequence, not found, bad config) is never transient.
 */
export function isTransient(error: unknown): boolean {
  // The client wraps the cause: a RequestError or JetStreamNotEnabled around NoResponders or a timeout.
  for (let cause = error; cause instanceof Error; cause = cause.cause) {
    if (cause instanceof TimeoutError || cause instanceof NoRespondersError) return true;
    if (cause instanceof JetStreamApiError) return cause.status === 503 || CLUSTER_UNAVAILABLE_CODES.has(cause.code);
  }
  return false;
}

export interface RetryOptions {
  readonly logger?: Logger;
  /** How long to keep trying in all; then the last error is thrown. A leader election takes seconds. */
  readonly budgetMs?: number;
}

const FIRST_DELAY_MS = 100;
const MAX_DELAY_MS = 2000;
export const TRANSIENT_BUDGET_MS = 30_000;

/**
 * Runs a JetStream request, sending it again while it fails transiently (isTransient), with backoff
 * from 100 ms doubling to 2 s, for at most `budgetMs`. Only for requests that are safe to repeat:
 * a publish with a `Nats-Msg-Id` (JetStream drops the repeat within its duplicate window), an ack,
 * a read, a compare-and-set update (a repeat fails on the revision instead of applying twice).
 */
export async function retryTransient<T>(what: string, request: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const deadline = Date.now() + (options.budgetMs ?? TRANSIENT_BUDGET_MS);
  for (let attempt = 1; ; attempt++) {
    try {
      return await request();
    } catch (error) {
      const delayMs = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (attempt - 1));
      if (!isTransient(error) || Date.now() + delayMs > deadline) throw error;
      options.logger?.warn({ err: error, attempt, what }, `nats: ${what} failed transiently; retrying`);
      await sleep(delayMs);
    }
  }
}
