import { JetStreamApiError } from '@nats-io/jetstream';
import { NoRespondersError, RequestError, TimeoutError } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { isTransient, retryTransient } from './transient.ts';

const apiError = (code: number, errCode: number, description: string) => new JetStreamApiError({ code, err_code: errCode, description });

describe('isTransient', () => {
  it('calls what a cluster answers during a leader election transient', () => {
    expect(isTransient(new TimeoutError())).toBe(true);
    expect(isTransient(new RequestError('no responders', { cause: new NoRespondersError('$JS.API.STREAM.INFO.X') }))).toBe(true);
    // What js.publish throws when the stream has no leader to take the message (a JetStreamNotEnabled).
    const noLeader = new RequestError('no responders', { cause: new NoRespondersError('heimdall.events.x') });
    expect(isTransient(new Error('jetstream is not enabled', { cause: noLeader }))).toBe(true);
    expect(isTransient(apiError(503, 10008, 'JetStream system temporarily unavailable'))).toBe(true);
    expect(isTransient(apiError(500, 10009, 'JetStream cluster can not handle request'))).toBe(true);
  });

  it('never retries a refusal on the merits', () => {
    expect(isTransient(apiError(400, 10071, 'wrong last sequence: 4'))).toBe(false);
    expect(isTransient(apiError(404, 10059, 'stream not found'))).toBe(false);
    expect(isTransient(new Error('invalid ack response'))).toBe(false);
    expect(isTransient(new Error('stream update failed', { cause: apiError(400, 10052, 'insufficient resources') }))).toBe(false);
    expect(isTransient('a string')).toBe(false);
  });
});

describe('retryTransient', () => {
  it('sends a request again while it fails transiently, then returns its answer', async () => {
    const failures = [new TimeoutError(), apiError(503, 10008, 'JetStream system temporarily unavailable')];
    let calls = 0;
    const answer = await retryTransient('publish', async () => {
      calls++;
      const failure = failures.shift();
      if (failure) throw failure;
      return 'stored';
    });
    expect(answer).toBe('stored');
    expect(calls).toBe(3);
  });

  it('throws a non-transient error at once', async () => {
    let calls = 0;
    const refused = apiError(400, 10071, 'wrong last sequence: 4');
    await expect(
      retryTransient('update', async () => {
        calls++;
        throw refused;
      }),
    ).rejects.toBe(refused);
    expect(calls).toBe(1);
  });

  it('gives up with the last error once its budget is spent', async () => {
    let calls = 0;
    const started = Date.now();
    await expect(
      retryTransient(
        'publish',
        async () => {
          calls++;
          throw new TimeoutError();
        },
        { budgetMs: 500 },
      ),
    ).rejects.toBeInstanceOf(TimeoutError);
    // 100 + 200 ms of backoff fit in the budget, the next 400 ms would not.
    expect(calls).toBe(3);
    expect(Date.now() - started).toBeLessThan(500);
  });
});
