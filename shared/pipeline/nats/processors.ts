import { createHash } from 'node:crypto';
import type { KV } from '@nats-io/kv';
import { decodeEvent } from '../../bus/nats/codec.ts';
import { retryTransient } from '../../bus/nats/transient.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { backoffDelayMs } from '../../errors/retry.ts';
import { traceFields, type AnyCloudEvent } from '../../events/index.ts';
import { isObjectCreated, kindOf, parseNotification, uploadId } from '../../events/minio.ts';
import type { Logger } from '../../logging/index.ts';
import { executeStage, withStageContext, type StageEnvironment } from '../execute.ts';
import { failureEvent, failureOn } from '../failure.ts';
import { followUps } from '../follow-ups.ts';
import { recordEvent, recordStageStart, type RunStateStore } from '../run-state/run-state.ts';
import type { AnyStage, IngestFunction } from '../stage.ts';
import type { Delivery, Disposition, Processor } from './worker.ts';

export interface ProcessorEnvironment {
  readonly environment: StageEnvironment;
  /** Where results go: JetStream, or the Knative Broker (K_SINK) for the ingest adapter. */
  readonly publish: (event: AnyCloudEvent) => Promise<boolean>;
  readonly runState: RunStateStore;
  readonly logger: Logger;
}

const ACK: Disposition = { kind: 'ack' };

/** Backoff between attempts of a retriable failure: 1 s, 2 s, 4 s ... capped at 30 s. */
export const retryDelayMs = (attempt: number) => backoffDelayMs(attempt, 1000, 30_000);

/** A failure is retried while attempts remain and it can succeed on retry (I/O, registry, benchmark). */
export function shouldRetry(result: AnyCloudEvent, delivery: Delivery): boolean {
  return result.type === 'heimdall.pipeline.failed' && result.data.retriable && delivery.attempt < delivery.maxDeliver;
}

/**
 * Publishes a result and what follows from it (follow-ups.ts), each then recorded (a run-state
 * hiccup must not lose the result: the event stream is the truth).
 */
export async function announce(result: AnyCloudEvent, env: ProcessorEnvironment): Promise<void> {
  for (const event of [result, ...followUps(result)]) {
    await env.publish(event);
    await recordEvent(env.runState, event).catch((error: unknown) => env.logger.warn({ err: error, event: event.id }, 'run state not updated'));
  }
}

/** A stage on its input event: the result (or failure) is published before the message is acked. */
export function stageProcessor(stage: AnyStage, env: ProcessorEnvironment): Processor {
  return async (delivery) => {
    const event = await startStage(stage, delivery, env);
    if ('kind' in event) return event;
    const result = await executeStage(stage, event, env.environment, { signal: delivery.signal, progress: delivery.progress, attempt: delivery.attempt });
    // The worker is stopping past its grace period: whatever the stage made of the abort is not the
    // run's outcome; the message is handed back and the next worker does the stage again.
    if (delivery.signal.aborted) return { kind: 'retry', delayMs: 0 };
    if (shouldRetry(result, delivery)) {
      env.logger.warn({ runId: event.data.runId, ...traceFields(result), attempt: delivery.attempt, error: result.data }, `${stage.name}: retrying`);
      return { kind: 'retry', delayMs: retryDelayMs(delivery.attempt) };
    }
    await announce(result, env);
    env.logger.info({ event: event.id, ...traceFields(result), result: result.type }, `${stage.name}: event handled`);
    return ACK;
  };
}

/**
 * The input event of a stage's delivery, its start recorded; or, for a message that is not a valid
 * event of the stage's input type, the verdict: it can never succeed, so it is terminated and
 * logged. It files no failure: a foreign message is no run's outcome, whatever run id it contains.
 */
export async function startStage(stage: AnyStage, delivery: Delivery, env: ProcessorEnvironment): Promise<AnyCloudEvent | Disposition> {
  const event = inputEvent(stage, delivery);
  if (!('type' in event)) {
    env.logger.warn({ err: event.error, stage: stage.name, bytes: Buffer.byteLength(delivery.body) }, `${stage.name}: invalid event terminated`);
    return { kind: 'term', reason: event.error.message };
  }
  await recordStageStart(env.runState, event.data.runId, stage.name).catch(() => undefined);
  return event;
}

/** The stage's input event in a message, or why it is not one. */
function inputEvent(stage: AnyStage, delivery: Pick<Delivery, 'headers' | 'body'>): AnyCloudEvent | { error: Error } {
  try {
    const event = decodeEvent(delivery.headers, delivery.body);
    if (event.type !== stage.input) throw new HeimdallError(ErrorCodes.INVALID_EVENT, `${stage.name} consumes ${stage.input}, not ${event.type}`);
    return event;
  } catch (error) {
    return { error: error instanceof Error ? error : new Error(String(error)) };
  }
}

/** JetStream gave up on a notification (ingest crashed or hung on every delivery): filed under the message's hash. */
export function ingestExhaustedHandler(env: ProcessorEnvironment) {
  return async (delivery: Pick<Delivery, 'body' | 'attempt'>) => {
    const messageRun = createHash('sha256').update(delivery.body).digest('hex').slice(0, 16);
    const error = new HeimdallError(ErrorCodes.DELIVERY_EXHAUSTED, `ingest did not finish a notification in ${delivery.attempt} deliveries (worker crashed or exceeded the ack wait each time)`);
    await announce(failureEvent(messageRun, 'ingest', error, delivery.attempt), env);
  };
}

/** JetStream gave up on a stage's message (crashes or timeouts on every delivery): the run fails. */
export function exhaustedHandler(stage: AnyStage, env: ProcessorEnvironment) {
  return async (delivery: Pick<Delivery, 'headers' | 'body' | 'attempt'>) => {
    // Only a valid input event is a run's message (an invalid one was terminated, never exhausted).
    const event = inputEvent(stage, delivery);
    if (!('type' in event)) return;
    const error = new HeimdallError(ErrorCodes.DELIVERY_EXHAUSTED, `${stage.name} did not finish in ${delivery.attempt} deliveries (worker crashed or exceeded the ack wait each time)`);
    await announce(failureOn(event, stage.name, error, delivery.attempt), env);
  };
}

/**
 * Ingest on a MinIO notification: each created checkpoint (or ONNX model) starts a run. Uploads
 * already announced (same bucket, key and etag: re-fired notifications, tagging) are skipped, using
 * the `heimdall_ingest` KV bucket; the mark is written after the event is published, and a crash in
 * between re-publishes an event that JetStream drops by its id.
 */
export function ingestProcessor(ingest: IngestFunction, seen: KV, env: ProcessorEnvironment): Processor {
  return async (delivery) => {
    let objects;
    try {
      objects = parseNotification(delivery.body);
    } catch (error) {
      env.logger.warn({ err: error }, 'ingest: not a bucket notification; dropped');
      return { kind: 'term', reason: (error as Error).message };
    }
    for (const object of objects) {
      if (!isObjectCreated(object)) {
        env.logger.info({ event: object.eventName, bucket: object.bucket, key: object.key }, 'ingest: not an object creation; ignored');
        continue;
      }
      const kind = kindOf(object.key);
      if (kind === 'ignored') {
        env.logger.info({ bucket: object.bucket, key: object.key }, 'ingest: not a checkpoint or model; ignored');
        continue;
      }
      const upload = uploadId(object);
      if (await retryTransient('read the ingest mark', () => seen.get(upload), { logger: env.logger })) {
        env.logger.info({ bucket: object.bucket, key: object.key, etag: object.etag }, 'ingest: already announced');
        continue;
      }
      // Until the content is hashed there is no run id; a failure is filed under the upload's id.
      const uploadRun = upload.slice(0, 16);
      let result: AnyCloudEvent;
      try {
        result = await withStageContext('ingest', uploadRun, env.environment, { signal: delivery.signal, progress: delivery.progress, attempt: delivery.attempt }, (ctx) => ingest(object, ctx));
      } catch (error) {
        result = failureEvent(uploadRun, 'ingest', error, delivery.attempt);
      }
      if (delivery.signal.aborted) return { kind: 'retry', delayMs: 0 };
      if (shouldRetry(result, delivery)) return { kind: 'retry', delayMs: retryDelayMs(delivery.attempt) };
      await announce(result, env);
      env.logger.info({ runId: result.data.runId, ...traceFields(result), bucket: object.bucket, key: object.key, event: result.type }, 'ingest: announced');
      // Only a started run marks the upload: the same object announced again after a failure (fixed
      // permissions, a late upload) is tried again.
      if (result.type !== 'heimdall.pipeline.failed') await retryTransient('mark the upload announced', () => seen.put(upload, result.data.runId), { logger: env.logger });
    }
    return ACK;
  };
}
