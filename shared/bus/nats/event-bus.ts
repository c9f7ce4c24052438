import { DeliverPolicy, jetstream, type JetStreamClient } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { AnyCloudEvent } from '../../events/index.ts';
import type { EventType } from '../../events/schemas.ts';
import type { Logger } from '../../logging/index.ts';
import type { EventBus, Subscription } from '../event-bus.ts';
import { decodeEvent, encodeEvent } from './codec.ts';
import { EVENTS_STREAM, subjectOf } from './subjects.ts';

/**
 * The EventBus on JetStream. Publishing sets `Nats-Msg-Id` to the event id, so a stage that runs
 * again after a redelivery re-publishes nothing new (within the stream's duplicate window).
 * `subscribe` is a live view (an ordered consumer from now on, or from the start): what `watch`
 * and observers need. Stages consume through durable consumers instead (pipeline/nats-worker.ts).
 */
export class NatsEventBus implements EventBus {
  private readonly js: JetStreamClient;
  private readonly stops = new Set<() => Promise<void>>();

  constructor(
    nc: NatsConnection,
    private readonly logger: Logger,
  ) {
    this.js = jetstream(nc);
  }

  async publish(event: AnyCloudEvent): Promise<boolean> {
    const { headers, body } = encodeEvent(event);
    const ack = await this.js.publish(subjectOf(event.type), body, { msgID: event.id, headers });
    return !ack.duplicate;
  }

  subscribe(types: readonly EventType[] | '*', handler: (event: AnyCloudEvent) => Promise<void>, options: { fromStart?: boolean } = {}): Subscription {
    const wanted = types === '*' ? undefined : new Set<string>(types);
    let stopped = false;
    let stopConsumer: (() => void) | undefined;
    const loop = (async (): Promise<void> => {
      const consumer = await this.js.consumers.get(EVENTS_STREAM, { deliver_policy: options.fromStart ? DeliverPolicy.All : DeliverPolicy.New });
      const messages = await consumer.consume();
      stopConsumer = () => void messages.stop();
      if (stopped) return messages.stop();
      for await (const message of messages) {
        try {
          const event = decodeEvent(message.headers, message.string());
          if (!wanted || wanted.has(event.type)) await handler(event);
        } catch (error) {
          this.logger.warn({ err: error, subject: message.subject }, 'skipped an event');
        }
      }
    })().catch((error: unknown) => this.logger.error({ err: error }, 'event subscription stopped'));
    const stop = async () => {
      stopped = true;
      stopConsumer?.();
      await loop.catch(() => undefined);
    };
    this.stops.add(stop);
    return {
      unsubscribe: () => {
        this.stops.delete(stop);
        void stop();
      },
    };
  }

  async close(): Promise<void> {
    await Promise.all([...this.stops].map((stop) => stop()));
    this.stops.clear();
  }
}
