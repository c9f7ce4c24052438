import type { JetStreamManager } from '@nats-io/jetstream';
import { consumerOfDurable } from '../../bus/nats/provision.ts';
import { retryTransient } from '../../bus/nats/transient.ts';
import { stageNamed, type AnyStage } from '../stage.ts';
import { exhaustedHandler, ingestExhaustedHandler, type ProcessorEnvironment } from './processors.ts';
import type { Processor } from './worker.ts';

/** What JetStream publishes when a consumer gives up on a message (io.nats.jetstream.advisory.v1.max_deliver). */
interface MaxDeliveriesAdvisory {
  readonly stream: string;
  readonly consumer: string;
  readonly stream_seq: number;
  readonly deliveries: number;
}

/**
 * JetStream stops delivering a message after MaxDeliver without telling any consumer; it publishes
 * an advisory instead (https://docs.nats.io/using-nats/developer/develop_jetstream/consumers,
 * "MaxDeliver"). The stream HEIMDALL_ADVISORIES keeps those of our consumers, and every `serve`
 * process works them on one shared durable: a stage that crashed its worker on every delivery is
 * failed with DELIVERY_EXHAUSTED by whichever process is alive, also when none was listening at the
 * moment JetStream gave up (a plain subscription in the dying worker would miss it). The failure's
 * event id is the run's and the stage's, so handling an advisory twice publishes it once.
 */
export function exhaustedProcessor(stages: readonly AnyStage[], jsm: JetStreamManager, env: ProcessorEnvironment): Processor {
  return async (delivery) => {
    const advisory = parseAdvisory(delivery.body);
    if (!advisory) return { kind: 'term', reason: 'not a MaxDeliver advisory' };
    const name = consumerOfDurable(advisory.consumer);
    if (!name || name === 'subscribers' || name === 'exhausted') {
      env.logger.info({ consumer: advisory.consumer }, 'exhausted: not a stage consumer; ignored');
      return { kind: 'ack' };
    }
    const stored = await retryTransient('read an exhausted message', () => jsm.streams.getMessage(advisory.stream, { seq: advisory.stream_seq }), { logger: env.logger });
    if (!stored) {
      env.logger.warn({ stream: advisory.stream, seq: advisory.stream_seq, consumer: advisory.consumer }, 'exhausted: the message is gone from its stream; no run to fail');
      return { kind: 'ack' };
    }
    const message = { headers: stored.header, body: stored.string(), attempt: advisory.deliveries };
    await (name === 'ingest' ? ingestExhaustedHandler(env) : exhaustedHandler(stageNamed(stages, name), env))(message);
    return { kind: 'ack' };
  };
}

function parseAdvisory(body: string): MaxDeliveriesAdvisory | undefined {
  try {
    const advisory = JSON.parse(body) as Partial<MaxDeliveriesAdvisory>;
    const valid = typeof advisory.stream === 'string' && typeof advisory.consumer === 'string' && Number.isSafeInteger(advisory.stream_seq) && Number.isSafeInteger(advisory.deliveries);
    return valid ? (advisory as MaxDeliveriesAdvisory) : undefined;
  } catch {
    return undefined;
  }
}
