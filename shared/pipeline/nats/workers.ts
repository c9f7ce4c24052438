import type { AnyCloudEvent } from '../../events/index.ts';
import { openKv } from '../../bus/nats/provision.ts';
import type { Logger } from '../../logging/index.ts';
import { stageNamed, type AnyStage, type IngestFunction, type StageName } from '../stage.ts';
import { exhaustedProcessor } from './exhausted.ts';
import { withCrashInjection } from './fault-injection.ts';
import { ingestProcessor, stageProcessor, type ProcessorEnvironment } from './processors.ts';
import type { NatsRuntime } from './runtime.ts';
import { startWorker, type Worker, type WorkerOptions } from './worker.ts';

/** Worker settings from configuration: delivery limits, and a grace period on stop as long as the ack wait. */
export function workerOptions(runtime: NatsRuntime, logger: Logger): WorkerOptions {
  const { ackWaitSeconds, maxDeliver, replicas } = runtime.environment.config.nats!;
  return { nc: runtime.nc, jsm: runtime.jsm, limits: { ackWaitSeconds, maxDeliver }, replicas, logger, graceMs: ackWaitSeconds * 1000 };
}

export interface WorkerSetOptions {
  readonly runtime: NatsRuntime;
  readonly stages: readonly AnyStage[];
  readonly ingest: IngestFunction;
  /** Which to run here (`heimdall serve --stages`). */
  readonly names: readonly StageName[];
  readonly logger: Logger;
  /** Where results go; JetStream unless the process is a Knative source (K_SINK). */
  readonly publish?: (event: AnyCloudEvent) => Promise<boolean>;
  readonly onEvent?: (event: AnyCloudEvent) => void;
  readonly onProgress?: (stage: StageName, message: string) => void;
}

/** Results go to `publish` (JetStream by default), then to `onEvent` (the terminal). */
export function processorEnvironment(runtime: NatsRuntime, logger: Logger, options: Pick<WorkerSetOptions, 'publish' | 'onEvent'>): ProcessorEnvironment {
  const publish = options.publish ?? ((event: AnyCloudEvent) => runtime.bus.publish(event));
  return {
    environment: runtime.environment,
    runState: runtime.runState,
    logger,
    publish: async (event) => {
      const accepted = await publish(event);
      // A duplicate was announced before (by this worker before a crash, or another one): not news.
      if (accepted) options.onEvent?.(event);
      return accepted;
    },
  };
}

/**
 * Starts one worker per named stage on its durable consumer, and one on the MaxDeliver advisories
 * of every stage (exhausted.ts: any live process fails a run whose stage worker died each time);
 * `stop` drains them all.
 */
export async function startWorkers(options: WorkerSetOptions): Promise<{ stop(): Promise<void> }> {
  const { runtime, logger } = options;
  const env = processorEnvironment(runtime, logger, options);
  const common = workerOptions(runtime, logger);
  const workers: Worker[] = [];
  for (const name of options.names) {
    const onProgress = (message: string) => options.onProgress?.(name, message);
    if (name === 'ingest') {
      const seen = await openKv(runtime.nc, 'heimdall_ingest', common.replicas);
      workers.push(await startWorker('ingest', withCrashInjection('ingest', ingestProcessor(options.ingest, seen, env)), { ...common, onProgress }));
      continue;
    }
    workers.push(await startWorker(name, withCrashInjection(name, stageProcessor(stageNamed(options.stages, name), env)), { ...common, onProgress }));
  }
  workers.push(await startWorker('exhausted', exhaustedProcessor(options.stages, runtime.jsm, env), common));
  logger.info({ stages: options.names }, 'workers started');
  return {
    async stop() {
      await Promise.all(workers.map((w) => w.stop()));
    },
  };
}
