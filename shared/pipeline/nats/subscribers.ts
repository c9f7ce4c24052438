import { decodeEvent } from '../../bus/nats/codec.ts';
import type { Logger } from '../../logging/index.ts';
import type { EventSubscriber } from '../subscriber.ts';
import { startWorker, type WorkerOptions } from './worker.ts';

/**
 * Deliveries of one event to the subscribers at most: with the handback delays doubling up to 10
 * minutes (alerts' notifier), about a day and a half of a webhook that never answers; then the
 * event is let go, with an error in the log.
 */
const SUBSCRIBER_MAX_DELIVER = 200;
/** How long stopping waits for the subscribers' deliveries in flight before handing them back. */
const SUBSCRIBERS_DRAIN_MS = 5000;

/**
 * Feeds event subscribers (alerts) from one durable consumer shared by every `serve` process, so
 * each event reaches them once however many workers run, on a consumer of their own: they never
 * slow the pipeline. An event is acknowledged only when every subscriber is done with it (the alert
 * delivered, or given up on for good): a process killed mid-delivery leaves it to be delivered again
 * by the next one. One a subscriber could not deliver yet (a webhook down) is handed back with the
 * delay it asks for, and the consumer goes on with the next events meanwhile; while a delivery is
 * retried the worker's `working()` heartbeats keep the ack wait from running out.
 */
export async function startSubscribers(subscribers: readonly EventSubscriber[], logger: Logger, options: WorkerOptions) {
  const worker = await startWorker(
    'subscribers',
    async (delivery) => {
      let event;
      try {
        event = decodeEvent(delivery.headers, delivery.body);
      } catch (error) {
        logger.warn({ err: error }, 'subscribers: undecodable event skipped');
        return { kind: 'ack' };
      }
      const handled = await Promise.all(subscribers.filter((s) => s.types.includes(event.type)).map((s) => s.accept(event)));
      const delays = handled.flatMap((h) => (h.kind === 'later' ? [h.delayMs] : []));
      if (delays.length === 0) return { kind: 'ack' };
      if (delivery.attempt >= SUBSCRIBER_MAX_DELIVER) {
        logger.error({ event: event.id, type: event.type, attempts: delivery.attempt }, 'subscribers: still not delivered after the last delivery; given up');
        return { kind: 'ack' };
      }
      return { kind: 'retry', delayMs: Math.max(...delays) };
    },
    { ...options, limits: { ...options.limits, maxDeliver: SUBSCRIBER_MAX_DELIVER } },
  );
  return {
    async stop() {
      // Together: closing the subscribers hands back what they are delivering, which ends the worker's in-flight message.
      await Promise.all([worker.stop(), ...subscribers.map((s) => s.close(SUBSCRIBERS_DRAIN_MS))]);
    },
  };
}
