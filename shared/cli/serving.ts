import { httpSink } from '../bus/http-sink.ts';
import type { Config } from '../config/index.ts';
import type { AnyCloudEvent } from '../events/index.ts';
import type { Logger } from '../logging/index.ts';
import { startDashboard } from '../dashboard/index.ts';
import { createAdapters } from '../pipeline/adapters.ts';
import { startLocalBroker } from '../pipeline/http/broker.ts';
import { serveFunction } from '../pipeline/http/server.ts';
import { connectRuntime } from '../pipeline/nats/runtime.ts';
import { startSubscribers } from '../pipeline/nats/subscribers.ts';
import { processorEnvironment, startWorkers, workerOptions } from '../pipeline/nats/workers.ts';
import { natsSweepPorts, startPeriodicSweep } from '../pipeline/reconcile.ts';
import { FsRunStateStore } from '../pipeline/run-state/fs.ts';
import { stageNamed, type AnyStage, type IngestFunction, type StageName } from '../pipeline/stage.ts';
import type { SubscriberFunction } from '../pipeline/subscriber.ts';

export interface ServeOptions {
  readonly config: Config;
  readonly logger: Logger;
  readonly stages: readonly AnyStage[];
  readonly ingest: IngestFunction;
  readonly subscribers: readonly SubscriberFunction[];
  /** The stages to run here; none with only the status page. */
  readonly names: readonly StageName[];
  /** Each stage as an HTTP function on its own port, fed by a local broker (Knative's path, on one machine). */
  readonly http: boolean;
  readonly dashboard?: { readonly port: number; readonly host?: string };
  /** The Knative Broker's address when this process is the ingest adapter (a SinkBinding sets K_SINK). */
  readonly sink?: string;
  readonly onEvent?: (event: AnyCloudEvent) => void;
  readonly onProgress?: (stage: StageName, message: string) => void;
}

export interface Serving {
  readonly dashboardUrl?: string;
  /** Ports of the HTTP functions (with `http`). */
  readonly functionPorts: Readonly<Partial<Record<StageName, number>>>;
  /** How long an in-flight message may take to finish once stopping (the ack wait); 0 without NATS. */
  readonly graceMs: number;
  /** The reconciliation sweep this process takes part in (it serves ingest and HEIMDALL_RECONCILE_INTERVAL is not `off`). */
  readonly reconcile?: { readonly bucket: string; readonly intervalMs: number };
  /**
   * Drains everything: workers finish their in-flight message (handed back past `graceMs`),
   * functions their requests, the connection flushes (at most DRAIN_TIMEOUT_MS, then it closes).
   * Bounded whether or not NATS answers; never throws.
   */
  stop(): Promise<void>;
}

/**
 * The composition root of `heimdall serve`: stage workers on NATS (or HTTP functions behind a local broker),
 * event subscribers (alerts) on one shared consumer, and the status page. Without NATS only the
 * status page can run, over the embedded default's run records and the configured registry.
 */
export async function startServing(options: ServeOptions): Promise<Serving> {
  const { config, logger } = options;
  // Stopped in phases, last started first; the steps of one phase in parallel, so the workers
  // share one grace period instead of taking one each. A step that fails is logged, and the
  // others still run: a connection that is gone must not keep the rest from stopping.
  const phases = { dashboard: [] as Step[], workers: [] as Step[], functions: [] as Step[], connection: [] as Step[] };
  const stopAll = async () => {
    for (const [phase, steps] of Object.entries(phases)) {
      const results = await Promise.allSettled(steps.map((step) => step()));
      for (const result of results) if (result.status === 'rejected') logger.warn({ err: result.reason, phase }, 'stopping: a step failed; going on');
    }
  };
  const graceMs = config.nats ? config.nats.ackWaitSeconds * 1000 : 0;
  try {
    if (!config.nats) {
      const dashboard = options.dashboard && (await startDashboard({ runState: new FsRunStateStore(config.dataDir), models: { registry: (await createAdapters(config)).registry, name: config.modelName }, logger, ...options.dashboard }));
      if (dashboard) phases.dashboard.push(() => dashboard.close());
      return { ...(dashboard ? { dashboardUrl: dashboard.url } : {}), functionPorts: {}, graceMs, stop: stopAll };
    }
    const runtime = await connectRuntime(config, logger, `heimdall-serve-${process.pid}`);
    phases.connection.push(() => runtime.close());
    const publish = options.sink ? httpSink(options.sink) : undefined;
    const viaHttp: StageName[] = options.http ? options.names.filter((n) => n !== 'ingest') : [];
    const workers = await startWorkers({ ...options, runtime, names: options.names.filter((n) => !viaHttp.includes(n)), ...(publish ? { publish } : {}) });
    phases.workers.push(() => workers.stop());

    const functionPorts: Partial<Record<StageName, number>> = {};
    if (viaHttp.length > 0) {
      const routes = [];
      for (const name of viaHttp) {
        const stage = stageNamed(options.stages, name);
        const running = await serveFunction(stage, { env: { ...process.env, PORT: '0' } });
        phases.functions.push(() => running.stop());
        functionPorts[name] = running.port;
        routes.push({ stage, url: `http://127.0.0.1:${running.port}/` });
      }
      const broker = await startLocalBroker(routes, processorEnvironment(runtime, logger, options), workerOptions(runtime, logger));
      // Stopped before the functions: no new deliveries to a draining function.
      phases.workers.push(() => broker.stop());
    }

    // Lost notifications: the processes serving ingest sweep the bucket, one at a time by the lock.
    const { bucket, intervalMs } = config.reconcile;
    const reconcile = intervalMs !== undefined && options.names.includes('ingest') ? { bucket, intervalMs } : undefined;
    if (reconcile) {
      const sweeper = startPeriodicSweep(await natsSweepPorts(runtime), { ...reconcile, logger });
      phases.workers.push(() => sweeper.stop());
    }

    const subscribers = options.subscribers.map((f) => f.create(config, logger)).filter((s) => s !== undefined);
    if (subscribers.length > 0) {
      const running = await startSubscribers(subscribers, logger, workerOptions(runtime, logger));
      phases.workers.push(() => running.stop());
    }

    const dashboard = options.dashboard && (await startDashboard({ runState: runtime.runState, models: { registry: runtime.environment.registry, name: config.modelName }, logger, ...options.dashboard }));
    if (dashboard) phases.dashboard.push(() => dashboard.close());
    return { ...(dashboard ? { dashboardUrl: dashboard.url } : {}), functionPorts, graceMs, ...(reconcile ? { reconcile } : {}), stop: stopAll };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

type Step = () => Promise<unknown>;
