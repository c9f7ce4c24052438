import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { closeNats, connectNats, DRAIN_TIMEOUT_MS } from '../../bus/nats/connection.ts';
import { NatsEventBus } from '../../bus/nats/event-bus.ts';
import { openKv, provisionStreams, replicationCaveat } from '../../bus/nats/provision.ts';
import type { Config } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import type { Logger } from '../../logging/index.ts';
import { createAdapters } from '../adapters.ts';
import type { StageEnvironment } from '../execute.ts';
import { KvRunStateStore } from '../run-state/kv.ts';
import { within } from './worker.ts';

/** A connection to the pipeline on NATS: streams provisioned, the event bus, run state in KV. */
export interface NatsRuntime {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly bus: NatsEventBus;
  readonly runState: KvRunStateStore;
  readonly environment: StageEnvironment;
  /** Drains the connection (pending publishes are flushed; at most DRAIN_TIMEOUT_MS, then it closes) and removes the scratch dir. */
  close(): Promise<void>;
}

/**
 * Workers provision streams and buckets and wait for a server; clients (`status`, `watch`) only
 * read what is there and fail at once when no server answers.
 */
export async function connectRuntime(config: Config, logger: Logger, name: string, role: 'worker' | 'client' = 'worker'): Promise<NatsRuntime> {
  if (!config.nats) throw new HeimdallError(ErrorCodes.USAGE, 'NATS_URL is not set: the NATS pipeline needs a server (the embedded default is `heimdall run`)');
  const nc = await connectNats(config.nats.url, name, logger, { waitForServer: role === 'worker' });
  const { replicas } = config.nats;
  const caveat = role === 'worker' ? replicationCaveat(nc.info?.version, replicas) : undefined;
  if (caveat) logger.error({ server: nc.info?.version, replicas }, caveat);
  const jsm = role === 'worker' ? await provisionStreams(nc, replicas) : await jetstreamManager(nc);
  const runState = new KvRunStateStore(role === 'worker' ? await openKv(nc, 'heimdall_runs', replicas) : await new Kvm(nc).open('heimdall_runs'), logger);
  const scratchDir = await mkdtemp(join(tmpdir(), 'heimdall-worker-'));
  const bus = new NatsEventBus(nc, logger);
  return {
    nc,
    jsm,
    bus,
    runState,
    environment: { ...(await createAdapters(config)), config, logger, scratchDir },
    async close() {
      // Bounded whether or not the server answers: subscriptions get the drain's deadline too.
      const started = Date.now();
      await within(bus.close(), DRAIN_TIMEOUT_MS);
      await closeNats(nc, logger, Math.max(100, DRAIN_TIMEOUT_MS - (Date.now() - started)));
      await rm(scratchDir, { recursive: true, force: true });
    },
  };
}
