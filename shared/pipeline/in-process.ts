import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { MemoryEventBus } from '../bus/memory.ts';
import type { Config } from '../config/index.ts';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { AnyCloudEvent } from '../events/index.ts';
import type { ObjectRecord } from '../events/minio.ts';
import type { Logger } from '../logging/index.ts';
import type { ModelRegistry } from '../registry/model-registry.ts';
import { withSharedModels } from '../runtime/model-host.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { failureEvent, failureOn } from './failure.ts';
import { followUps } from './follow-ups.ts';
import { ingestLocalFile, UNKNOWN_RUN } from './local-ingest.ts';
import { buildReport, type RunReport } from './report.ts';
import { recordEvent, recordStageStart, type RunStateStore } from './run-state/run-state.ts';
import { executeStage, withStageContext, type StageEnvironment } from './execute.ts';
import { uploadRunId, type AnnouncedUploads, type Upload } from './run-state/announced.ts';
import type { AnyStage, IngestFunction, StageName } from './stage.ts';

export interface InProcessOptions {
  readonly stages: readonly AnyStage[];
  readonly store: ObjectStore;
  readonly registry: ModelRegistry;
  readonly config: Config;
  readonly logger: Logger;
  readonly signal?: AbortSignal;
  /** Where the run's record is kept for `heimdall status` and the status page. */
  readonly runState?: RunStateStore;
  /** Ingest's dedupe on the embedded default: the upload is marked once its run has started (what reconciliation reads). */
  readonly announced?: AnnouncedUploads;
  readonly onEvent?: (event: AnyCloudEvent) => void;
  readonly onProgress?: (stage: StageName, message: string) => void;
}

/**
 * The id of a run's last event once it has registered: the registration's last follow-up (a
 * variant's promotion comes after the fp32 model's), or the registration itself when it has none.
 */
const lastEventId = (registered: AnyCloudEvent) => (followUps(registered).at(-1) ?? registered).id;

/**
 * What a run starts from: a local file (`heimdall run`: stored in the checkpoints bucket first), or an
 * object already in the store, ingested by the ingest function as its notification would have been
 * (reconciliation on the embedded default).
 */
export type RunSource = string | { readonly object: ObjectRecord; readonly ingest: IngestFunction };

/** How long a stopped run waits for the stage in flight to notice (stages check the signal between steps) before it is given up on. */
export const ABORT_GRACE_MS = 3000;

/**
 * Runs the whole pipeline in this process on an in-memory bus: each stage subscribes to its input
 * event, as it would on NATS, and publishes its result and the result's follow-ups (the
 * `model.promoted` of a gate that moved the alias); the run ends at `pipeline.failed`, or at the
 * registration's last event.
 *
 * When `signal` aborts (SIGTERM, Ctrl-C) no further stage starts, the stage in flight is told (its
 * context's signal) and given ABORT_GRACE_MS to stop, and the run ends with `pipeline.failed`
 * ABORTED for that stage (recorded in the run state, so no record is left at "running"); the scratch
 * dir, with whatever the stage had half written in it, is removed either way.
 *
 * The stages share their onnxruntime sessions (model-host.ts): validate, parity and the benchmark
 * open the run's model once between them, in a process of its own that ends with the run.
 */
export function runInProcess(source: RunSource, options: InProcessOptions): Promise<RunReport> {
  return withSharedModels(() => runStages(source, options));
}

async function runStages(source: RunSource, options: InProcessOptions): Promise<RunReport> {
  const events: AnyCloudEvent[] = [];
  const scratchDir = await mkdtemp(join(tmpdir(), 'heimdall-run-'));
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  // A runner bug must end the run, not hang it.
  const bus = new MemoryEventBus((error, event) => {
    options.logger.error({ err: error, event: event.id }, 'event handler failed');
    finish();
  });
  const signal = options.signal ?? new AbortController().signal;
  const stopped = () => (signal.reason instanceof HeimdallError ? signal.reason : new HeimdallError(ErrorCodes.ABORTED, 'the run was stopped before it finished'));
  let runId = UNKNOWN_RUN;
  let current: StageName = 'ingest';
  /** The event the current stage runs on (its failure continues that event's trace). */
  let currentInput: AnyCloudEvent | undefined;
  /** Set once the run has ended (or been given up on): a stage finishing later publishes nothing. */
  let over = false;

  /** Known once the run has registered. */
  let lastId: string | undefined;
  bus.subscribe('*', async (event) => {
    events.push(event);
    if (options.runState) await recordEvent(options.runState, event);
    options.onEvent?.(event);
    if (event.type === 'heimdall.model.registered') lastId = lastEventId(event);
    if (event.type === 'heimdall.pipeline.failed' || event.id === lastId) finish();
  });
  const environment: StageEnvironment = { store: options.store, registry: options.registry, config: options.config, logger: options.logger, scratchDir };
  const subscriptions = options.stages.map((stage) =>
    bus.subscribe([stage.input], async (event) => {
      if (over) return;
      current = stage.name;
      currentInput = event;
      if (signal.aborted) return void (await bus.publish(failureOn(event, stage.name, stopped())));
      if (options.runState) await recordStageStart(options.runState, event.data.runId, stage.name);
      const result = await executeStage(stage, event, environment, { signal, progress: (message) => options.onProgress?.(stage.name, message) });
      if (over) return;
      // Stopped while it ran: whatever it returned, the run ends here (a model it registered stays registered).
      const stop = signal.aborted && result.type !== 'heimdall.model.registered';
      for (const out of stop ? [failureOn(event, stage.name, stopped())] : [result, ...followUps(result)]) await bus.publish(out);
    }),
  );
  /** The run's end, or, once stopped, the grace period's: then the stage in flight is given up on. */
  const ended = async () => {
    const timer = new AbortController();
    const aborted = new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true, signal: timer.signal })));
    const graceOver = aborted.then(() => sleep(ABORT_GRACE_MS, 'given up' as const, { signal: timer.signal })).catch(() => 'finished' as const);
    const outcome = await Promise.race([finished.then(() => 'finished' as const), graceOver]);
    timer.abort();
    if (outcome === 'finished') return;
    over = true;
    options.logger.warn({ runId, stage: current }, `stage ${current} did not stop within ${ABORT_GRACE_MS} ms of the stop; giving up on it`);
    await bus.publish(currentInput ? failureOn(currentInput, current, stopped()) : failureEvent(runId, current, stopped()));
    await finished;
  };

  try {
    // Until the content is hashed there is no run id: a failure is filed under the upload's.
    const unhashed = typeof source === 'string' ? UNKNOWN_RUN : uploadRunId(source.object);
    const progress = (message: string) => options.onProgress?.('ingest', message);
    let first: AnyCloudEvent;
    let upload: Upload;
    try {
      if (typeof source === 'string') {
        const created = await ingestLocalFile(source, options.store, progress, signal);
        [first, upload] = [created, created.data];
      } else {
        first = await withStageContext('ingest', unhashed, environment, { signal, progress }, (ctx) => source.ingest(source.object, ctx));
        upload = source.object;
      }
    } catch (error) {
      await bus.publish(failureEvent(unhashed, 'ingest', signal.aborted ? stopped() : error));
      await finished;
      return buildReport(unhashed, events);
    }
    runId = first.data.runId;
    await bus.publish(first);
    await options.announced?.mark(upload, runId);
    await ended();
    return buildReport(runId, events);
  } finally {
    over = true;
    // A stage given up on must not hold the bus open; its own scratch dir goes with ours.
    for (const subscription of subscriptions) subscription.unsubscribe();
    await bus.close();
    await rm(scratchDir, { recursive: true, force: true });
  }
}
