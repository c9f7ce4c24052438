import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import type { JetStreamManager } from '@nats-io/jetstream';
import { connectNats } from '../../bus/nats/connection.ts';
import { NatsEventBus } from '../../bus/nats/event-bus.ts';
import { openKv, provisionStreams } from '../../bus/nats/provision.ts';
import type { Config } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import type { Logger } from '../../logging/index.ts';
import { createAdapters } from '../adapters.ts';
import type { StageEnvironment } from '../execute.ts';
import { KvRunStateStore } from '../run-state/kv.ts';

/** A connection to the pipeline on NATS: streams provisioned, the event bus, run state in KV. */
export interface NatsRuntime {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly bus: NatsEventBus;
  readonly runState: KvRunStateStore;
  readonly environment: StageEnvironment;
  /** Drains the connection (pending publishes are flushed) and removes the scratch dir. */
  close(): Promise<void>;
}

export async function connectRuntime(config: Config, logger: Logger, name: string): Promise<NatsRuntime> {
  if (!config.nats) throw new HeimdallError(ErrorCodes.USAGE, 'NATS_URL is not set: the NATS pipeline needs a server (the embedded default is `heimdall run`)');
  const nc = await connectNats(config.nats.url, name, logger);
  const jsm = await provisionStreams(nc);
  const runState = new KvRunStateStore(await openKv(nc, 'heimdall_runs'));
  const scratchDir = await mkdtemp(join(tmpdir(), 'heimdall-worker-'));
  const bus = new NatsEventBus(nc, logger);
  return {
    nc,
    jsm,
    bus,
    runState,
    environment: { ...createAdapters(config), config, logger, scratchDir },
    async close() {
      await bus.close();
      await nc.drain();
      await rm(scratchDir, { recursive: true, force: true });
    },
  };
}
