import { decodeEvent } from '../../bus/nats/codec.ts';
import type { Logger } from '../../logging/index.ts';
import type { EventSubscriber } from '../subscriber.ts';
import { startWorker, type WorkerOptions } from './worker.ts';

/**
 * Feeds event subscribers (alerts) from one durable consumer shared by every `serve` process, so
 * each event reaches them once however many workers run. Subscribers take an event and return at
 * once (they never slow the pipeline); what they do with it is theirs to make reliable.
 */
export async function startSubscribers(subscribers: readonly EventSubscriber[], logger: Logger, options: WorkerOptions) {
  const worker = await startWorker(
    'subscribers',
    async (delivery) => {
      try {
        const event = decodeEvent(delivery.headers, delivery.body);
        for (const subscriber of subscribers) if (subscriber.types.includes(event.type)) subscriber.accept(event);
      } catch (error) {
        logger.warn({ err: error }, 'subscribers: undecodable event skipped');
      }
      return { kind: 'ack' };
    },
    options,
  );
  return {
    async stop() {
      await worker.stop();
      await Promise.all(subscribers.map((s) => s.close(5000)));
    },
  };
}
