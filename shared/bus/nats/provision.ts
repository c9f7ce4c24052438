import { jetstreamManager, JetStreamApiError, type ConsumerConfig, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import consumers from '../../../infra/nats/consumers.json' with { type: 'json' };
import kvBuckets from '../../../infra/nats/kv.json' with { type: 'json' };
import streams from '../../../infra/nats/streams.json' with { type: 'json' };
import { retryTransient } from './transient.ts';

/** The stages and subscribers with a durable consumer in infra/nats/consumers.json. */
export type ConsumerName = Exclude<keyof typeof consumers, '$comment' | 'defaults'>;

/** The consumer of infra/nats/consumers.json with this durable name (what JetStream's advisories name). */
export function consumerOfDurable(durable: string): ConsumerName | undefined {
  return (Object.keys(consumers) as Array<keyof typeof consumers>).find((name): name is ConsumerName => name !== '$comment' && name !== 'defaults' && consumers[name].durable_name === durable);
}

export interface DeliveryLimits {
  readonly ackWaitSeconds: number;
  readonly maxDeliver: number;
}

const NANOS_PER_SECOND = 1_000_000_000;
const STREAM_NOT_FOUND = 10059;

/**
 * Creates or updates the streams of infra/nats/streams.json so they match it, with `replicas`
 * copies each (HEIMDALL_NATS_REPLICAS). Idempotent: every process runs it at start, whichever comes
 * first creates, the others find them in place. Replicas are only ever raised (JetStream scales a
 * stream up by an update, and its consumers with it): a process started with the default 1 must
 * not shrink a cluster's R3 streams; lowering them is an operator's `nats stream edit`. Requests
 * are retried through a leader election (transient.ts).
 */
export async function provisionStreams(nc: NatsConnection, replicas = 1): Promise<JetStreamManager> {
  const jsm = await retryTransient('connect to JetStream', () => jetstreamManager(nc));
  for (const [name, config] of Object.entries(streams)) {
    if (name === '$comment') continue;
    const wanted = { ...(config as Partial<StreamConfig> & { name: string }), num_replicas: replicas };
    await retryTransient(`provision stream ${wanted.name}`, async () => {
      try {
        const existing = await jsm.streams.info(wanted.name);
        await jsm.streams.update(wanted.name, { ...wanted, num_replicas: Math.max(replicas, existing.config.num_replicas) });
      } catch (error) {
        if (!(error instanceof JetStreamApiError && error.code === STREAM_NOT_FOUND)) throw error;
        await jsm.streams.add(wanted).catch(async (raced: unknown) => {
          // Another process created it between our info and add.
          if (!(await jsm.streams.info(wanted.name).catch(() => undefined))) throw raced;
        });
      }
    });
  }
  return jsm;
}

/**
 * The durable consumer of a stage (infra/nats/consumers.json, with the configured delivery limits).
 * Its replicas follow its stream's (`num_replicas: 0`). `durable` names another consumer on the
 * same input (the local broker's HTTP delivery).
 */
export async function provisionConsumer(jsm: JetStreamManager, name: ConsumerName, limits: DeliveryLimits, durable?: string): Promise<{ stream: string; durable: string }> {
  const { stream, ...own } = consumers[name];
  const config = { ...consumers.defaults, ...own, ...(durable ? { durable_name: durable } : {}), ack_wait: limits.ackWaitSeconds * NANOS_PER_SECOND, max_deliver: limits.maxDeliver } as Partial<ConsumerConfig>;
  // consumers.add is create-or-update for a durable with an unchanged filter.
  await retryTransient(`provision consumer ${config.durable_name}`, () => jsm.consumers.add(stream, config));
  return { stream, durable: config.durable_name! };
}

/**
 * Why this server should not hold replicated streams, if it should not: nats-server before 2.10
 * loses compare-and-set writes to a replicated KV bucket under concurrent writers (measured on
 * 2.9.10, Debian 12's: 48-60 of 300 increments by three writers lost on an R3 bucket; none on
 * 2.10.26 or 2.15.1), and run state is written that way by every worker.
 */
export function replicationCaveat(serverVersion: string | undefined, replicas: number): string | undefined {
  const [major = 0, minor = 0] = (serverVersion ?? '').split('.').map(Number);
  if (replicas <= 1 || major > 2 || (major === 2 && minor >= 10)) return undefined;
  return `nats-server ${serverVersion ?? '(unknown version)'} loses compare-and-set writes to replicated KV buckets (run state); with HEIMDALL_NATS_REPLICAS=${replicas} run nats-server 2.10 or later`;
}

/** A KV bucket of infra/nats/kv.json, created when missing; an existing one's replicas are raised to `replicas` (never lowered), as the streams'. */
export async function openKv(nc: NatsConnection, name: keyof Omit<typeof kvBuckets, '$comment'>, replicas = 1): Promise<KV> {
  const { history, ttl_seconds } = kvBuckets[name];
  return retryTransient(`open KV bucket ${name}`, async () => {
    const kv = await new Kvm(nc).create(name, { history, replicas, ...(ttl_seconds ? { ttl: ttl_seconds * 1000 } : {}) });
    // Kvm.create leaves an existing bucket as it is: its stream is scaled up here.
    const jsm = await jetstreamManager(nc);
    const { config } = await jsm.streams.info(`KV_${name}`);
    if (config.num_replicas < replicas) await jsm.streams.update(config.name, { ...config, num_replicas: replicas });
    return kv;
  });
}
