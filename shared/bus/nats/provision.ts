import { jetstreamManager, JetStreamApiError, type ConsumerConfig, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import consumers from '../../../infra/nats/consumers.json' with { type: 'json' };
import kvBuckets from '../../../infra/nats/kv.json' with { type: 'json' };
import streams from '../../../infra/nats/streams.json' with { type: 'json' };

/** The stages and subscribers with a durable consumer in infra/nats/consumers.json. */
export type ConsumerName = Exclude<keyof typeof consumers, '$comment' | 'defaults'>;

export interface DeliveryLimits {
  readonly ackWaitSeconds: number;
  readonly maxDeliver: number;
}

const NANOS_PER_SECOND = 1_000_000_000;
const STREAM_NOT_FOUND = 10059;

/**
 * Creates or updates the streams of infra/nats/streams.json so they match it. Idempotent: every
 * process runs it at start, whichever comes first creates, the others find them in place.
 */
export async function provisionStreams(nc: NatsConnection): Promise<JetStreamManager> {
  const jsm = await jetstreamManager(nc);
  for (const [name, config] of Object.entries(streams)) {
    if (name === '$comment') continue;
    const wanted = config as Partial<StreamConfig> & { name: string };
    try {
      await jsm.streams.info(wanted.name);
      await jsm.streams.update(wanted.name, wanted);
    } catch (error) {
      if (!(error instanceof JetStreamApiError && error.code === STREAM_NOT_FOUND)) throw error;
      await jsm.streams.add(wanted).catch(async (raced: unknown) => {
        // Another process created it between our info and add.
        if (!(await jsm.streams.info(wanted.name).catch(() => undefined))) throw raced;
      });
    }
  }
  return jsm;
}

/**
 * The durable consumer of a stage (infra/nats/consumers.json, with the configured delivery limits).
 * `durable` names another consumer on the same input (the local broker's HTTP delivery).
 */
export async function provisionConsumer(jsm: JetStreamManager, name: ConsumerName, limits: DeliveryLimits, durable?: string): Promise<{ stream: string; durable: string }> {
  const { stream, ...own } = consumers[name];
  const config = { ...consumers.defaults, ...own, ...(durable ? { durable_name: durable } : {}), ack_wait: limits.ackWaitSeconds * NANOS_PER_SECOND, max_deliver: limits.maxDeliver } as Partial<ConsumerConfig>;
  // consumers.add is create-or-update for a durable with an unchanged filter.
  await jsm.consumers.add(stream, config);
  return { stream, durable: config.durable_name! };
}

export async function openKv(nc: NatsConnection, name: keyof Omit<typeof kvBuckets, '$comment'>): Promise<KV> {
  const { history, ttl_seconds } = kvBuckets[name];
  return new Kvm(nc).create(name, { history, ...(ttl_seconds ? { ttl: ttl_seconds * 1000 } : {}) });
}
