import { setTimeout as sleep } from 'node:timers/promises';
import { DeliverPolicy, jetstream, type ConsumerMessages, type JetStreamClient } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { AnyCloudEvent } from '../../events/index.ts';
import type { EventType } from '../../events/schemas.ts';
import type { Logger } from '../../logging/index.ts';
import type { EventBus, Subscription } from '../event-bus.ts';
import { decodeEvent, encodeEvent } from './codec.ts';
import { EVENTS_STREAM, subjectOf } from './subjects.ts';
import { retryTransient } from './transient.ts';

/** A view whose ordered consumer went quiet (its server died, it was not recreated) is opened again, with backoff. */
const REOPEN_MIN_MS = 250;
const REOPEN_MAX_MS = 5000;
/** Pull requests of a view expire this often: heartbeats every half of it show a dead consumer within seconds. */
const VIEW_EXPIRES_MS = 5000;

/**
 * The EventBus on JetStream. Publishing sets `Nats-Msg-Id` to the event id, so a stage that runs
 * again after a redelivery re-publishes nothing new (within the stream's duplicate window); the same
 * id makes a publish safe to send again while the stream elects a leader (transient.ts), so a
 * result is not lost, nor its stage redone, for want of a leader for a few seconds.
 * `subscribe` is a live view (an ordered consumer from now on, or from the start): what `watch`
 * and observers need. Stages consume through durable consumers instead (pipeline/nats/worker.ts).
 */
export class NatsEventBus implements EventBus {
  private readonly js: JetStreamClient;
  private readonly stops = new Set<() => Promise<void>>();
  /** Views to open again when the connection comes back (their consumers may have died with its server). */
  private readonly reopens = new Set<() => void>();

  constructor(
    nc: NatsConnection,
    private readonly logger: Logger,
  ) {
    this.js = jetstream(nc);
    void (async () => {
      for await (const status of nc.status()) if (status.type === 'reconnect') for (const reopen of this.reopens) reopen();
    })();
  }

  async publish(event: AnyCloudEvent): Promise<boolean> {
    const { headers, body } = encodeEvent(event);
    const ack = await retryTransient(`publish ${event.id}`, () => this.js.publish(subjectOf(event.type), body, { msgID: event.id, headers }), { logger: this.logger });
    return !ack.duplicate;
  }

  /**
   * An ordered consumer is an ephemeral, unreplicated consumer on one server; when that server
   * dies the client's own recovery can wait for it forever (it asks for the consumer's info, which
   * no one answers). So the view opens a new one itself, from the stream sequence after the last
   * event it handled (no gap, no repeat), whenever the connection reconnects, the consumer misses
   * its heartbeats, or its iterator ends.
   */
  subscribe(types: readonly EventType[] | '*', handler: (event: AnyCloudEvent) => Promise<void>, options: { fromStart?: boolean } = {}): Subscription {
    const wanted = types === '*' ? undefined : new Set<string>(types);
    let stopped = false;
    const ended = new AbortController();
    let current: ConsumerMessages | undefined;
    const reopen = () => {
      try {
        current?.stop();
      } catch {
        // Already stopped.
      }
    };
    this.reopens.add(reopen);
    const loop = (async (): Promise<void> => {
      // Where the view starts: the stream's first event, or the one after its last now.
      let next = options.fromStart ? 1 : await retryTransient('read the event stream', async () => (await (await this.js.streams.get(EVENTS_STREAM)).info()).state.last_seq + 1, { logger: this.logger });
      for (let failures = 0; !stopped; ) {
        try {
          const consumer = await this.js.consumers.get(EVENTS_STREAM, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: next });
          const messages = await consumer.consume({ expires: VIEW_EXPIRES_MS });
          current = messages;
          if (stopped) messages.stop();
          void (async () => {
            for await (const status of messages.status()) if (status.type === 'heartbeats_missed' && status.count >= 2) reopen();
          })().catch(() => undefined);
          for await (const message of messages) {
            failures = 0;
            next = message.seq + 1;
            try {
              const event = decodeEvent(message.headers, message.string());
              if (!wanted || wanted.has(event.type)) await handler(event);
            } catch (error) {
              this.logger.warn({ err: error, subject: message.subject }, 'skipped an event');
            }
          }
        } catch (error) {
          if (stopped) break;
          this.logger.warn({ err: error, failures }, 'event subscription failed; opening it again');
        }
        if (stopped) break;
        await sleep(Math.min(REOPEN_MAX_MS, REOPEN_MIN_MS * 2 ** failures++), undefined, { signal: ended.signal }).catch(() => undefined);
      }
    })().catch((error: unknown) => this.logger.error({ err: error }, 'event subscription stopped'));
    const stop = async () => {
      stopped = true;
      ended.abort();
      this.reopens.delete(reopen);
      reopen();
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
