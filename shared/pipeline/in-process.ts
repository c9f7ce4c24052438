import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryEventBus } from '../bus/memory.ts';
import type { Config } from '../config/index.ts';
import type { AnyCloudEvent, CloudEvent } from '../events/index.ts';
import type { Logger } from '../logging/index.ts';
import type { ModelRegistry } from '../registry/model-registry.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { failureEvent } from './failure.ts';
import { ingestLocalFile, UNKNOWN_RUN } from './local-ingest.ts';
import { buildReport, type RunReport } from './report.ts';
import { recordEvent, recordStageStart, type RunStateStore } from './run-state/run-state.ts';
import { executeStage, type StageEnvironment } from './execute.ts';
import type { AnyStage, StageName } from './stage.ts';

export interface InProcessOptions {
  readonly stages: readonly AnyStage[];
  readonly store: ObjectStore;
  readonly registry: ModelRegistry;
  readonly config: Config;
  readonly logger: Logger;
  readonly signal?: AbortSignal;
  /** Where the run's record is kept for `heimdall status` and the status page. */
  readonly runState?: RunStateStore;
  readonly onEvent?: (event: AnyCloudEvent) => void;
  readonly onProgress?: (stage: StageName, message: string) => void;
}

/**
 * Runs the whole pipeline in this process on an in-memory bus: each stage subscribes to its input
 * event, as it would on NATS, and the run ends at `model.registered` or `pipeline.failed`.
 */
export async function runInProcess(checkpointPath: string, options: InProcessOptions): Promise<RunReport> {
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

  bus.subscribe('*', async (event) => {
    events.push(event);
    if (options.runState) await recordEvent(options.runState, event);
    options.onEvent?.(event);
    if (event.type === 'heimdall.model.registered' || event.type === 'heimdall.pipeline.failed') finish();
  });
  const environment: StageEnvironment = { store: options.store, registry: options.registry, config: options.config, logger: options.logger, scratchDir };
  for (const stage of options.stages) {
    bus.subscribe([stage.input], async (event) => {
      if (options.runState) await recordStageStart(options.runState, event.data.runId, stage.name);
      await bus.publish(await executeStage(stage, event, environment, { signal, progress: (message) => options.onProgress?.(stage.name, message) }));
    });
  }

  try {
    let created: CloudEvent<'heimdall.checkpoint.created'>;
    try {
      created = await ingestLocalFile(checkpointPath, options.store, (message) => options.onProgress?.('ingest', message));
    } catch (error) {
      await bus.publish(failureEvent(UNKNOWN_RUN, 'ingest', error));
      await finished;
      return buildReport(UNKNOWN_RUN, events);
    }
    await bus.publish(created);
    await finished;
    return buildReport(created.data.runId, events);
  } finally {
    await bus.close();
    await rm(scratchDir, { recursive: true, force: true });
  }
}

