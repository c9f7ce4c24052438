import { setTimeout as sleep } from 'node:timers/promises';

/** How often and how patiently a call to a service is repeated after a transient failure. */
export interface RetryPolicy {
  /** Tries in all, the first included. */
  readonly attempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

/** About 25 s of waiting in all: rides out a service restart, then gives up so the runner can redeliver. */
export const DEFAULT_RETRY: RetryPolicy = { attempts: 8, baseDelayMs: 250, maxDelayMs: 8_000 };

/** Node's codes for a connection that failed or broke: the request may succeed on a new one. */
const NETWORK_ERRORS = new Set(['ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET']);

export function isNetworkError(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return (typeof code === 'string' && NETWORK_ERRORS.has(code)) || (error instanceof Error && error.message === 'socket hang up');
}

/** Exponential backoff: `baseMs` before the second attempt, doubling, capped at `maxMs`. */
export function backoffDelayMs(attempt: number, baseMs: number, maxMs: number): number {
  return Math.min(maxMs, baseMs * 2 ** (attempt - 1));
}

/**
 * Runs `operation` until it succeeds, fails with an error `transient` does not accept, or the
 * attempts run out (then the last error is thrown). Exponential backoff with jitter (half fixed,
 * half random), so that several workers hitting the same outage do not retry in lockstep.
 */
export async function withRetry<T>(operation: (attempt: number) => Promise<T>, transient: (error: unknown) => boolean, policy: RetryPolicy = DEFAULT_RETRY): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation(attempt);
    } catch (error) {
      if (attempt >= policy.attempts || !transient(error)) throw error;
      const delay = backoffDelayMs(attempt, policy.baseDelayMs, policy.maxDelayMs);
      await sleep(delay / 2 + Math.random() * (delay / 2));
    }
  }
}
