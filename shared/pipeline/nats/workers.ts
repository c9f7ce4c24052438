import type { AnyCloudEvent } from '../../events/index.ts';
import { openKv } from '../../bus/nats/provision.ts';
import type { Logger } from '../../logging/index.ts';
import type { AnyStage, IngestFunction, StageName } from '../stage.ts';
import { exhaustedHandler, ingestProcessor, stageProcessor, type ProcessorEnvironment } from './processors.ts';
import type { NatsRuntime } from './runtime.ts';
import { startWorker, type Worker } from './worker.ts';

export interface WorkerSetOptions {
  readonly runtime: NatsRuntime;
  readonly stages: readonly AnyStage[];
  readonly ingest: IngestFunction;
  /** Which to run here (`heimdall serve --stages`). */
  readonly names: readonly StageName[];
  readonly logger: Logger;
  /** Where results go; JetStream unless the process is a Knative source (K_SINK). */
  readonly publish?: (event: AnyCloudEvent) => Promise<void>;
  readonly onEvent?: (event: AnyCloudEvent) => void;
  readonly onProgress?: (stage: StageName, message: string) => void;
}

/** Starts one worker per named stage on its durable consumer; `stop` drains them all. */
export async function startWorkers(options: WorkerSetOptions): Promise<{ stop(): Promise<void> }> {
  const { runtime, logger } = options;
  const config = runtime.environment.config;
  const publish = options.publish ?? ((event: AnyCloudEvent) => runtime.bus.publish(event));
  const env: ProcessorEnvironment = {
    environment: runtime.environment,
    runState: runtime.runState,
    logger,
    publish: async (event) => {
      await publish(event);
      options.onEvent?.(event);
    },
  };
  const common = {
    nc: runtime.nc,
    jsm: runtime.jsm,
    limits: { ackWaitSeconds: config.nats!.ackWaitSeconds, maxDeliver: config.nats!.maxDeliver },
    logger,
    graceMs: config.nats!.ackWaitSeconds * 1000,
  };
  const workers: Worker[] = [];
  for (const name of options.names) {
    const onProgress = (message: string) => options.onProgress?.(name, message);
    if (name === 'ingest') {
      workers.push(await startWorker('ingest', ingestProcessor(options.ingest, await openKv(runtime.nc, 'heimdall_ingest'), env), { ...common, onProgress }));
      continue;
    }
    const stage = options.stages.find((s) => s.name === name)!;
    workers.push(await startWorker(name, stageProcessor(stage, env), { ...common, onProgress, onExhausted: exhaustedHandler(stage, env) }));
  }
  logger.info({ stages: options.names }, 'workers started');
  return {
    async stop() {
      await Promise.all(workers.map((w) => w.stop()));
    },
  };
}
