import type { AnyCloudEvent } from '../events/index.ts';
import type { EventType } from '../events/schemas.ts';
import type { EventBus, Subscription } from './event-bus.ts';

interface Subscriber {
  readonly types: ReadonlySet<EventType> | '*';
  readonly handler: (event: AnyCloudEvent) => Promise<void>;
  queue: Promise<void>;
  active: boolean;
}

/** The embedded EventBus: in-process, asynchronous delivery, deduplicated by event id. */
export class MemoryEventBus implements EventBus {
  private readonly subscribers = new Set<Subscriber>();
  private readonly seen = new Set<string>();
  private closed = false;

  constructor(private readonly onHandlerError: (error: unknown, event: AnyCloudEvent) => void = () => undefined) {}

  async publish(event: AnyCloudEvent): Promise<boolean> {
    if (this.closed) throw new Error('event bus is closed');
    if (this.seen.has(event.id)) return false;
    this.seen.add(event.id);
    for (const subscriber of this.subscribers) {
      if (subscriber.types !== '*' && !subscriber.types.has(event.type)) continue;
      subscriber.queue = subscriber.queue.then(async () => {
        if (!subscriber.active) return;
        try {
          await subscriber.handler(event);
        } catch (error) {
          this.onHandlerError(error, event);
        }
      });
    }
    return true;
  }

  subscribe(types: readonly EventType[] | '*', handler: (event: AnyCloudEvent) => Promise<void>): Subscription {
    const subscriber: Subscriber = { types: types === '*' ? '*' : new Set(types), handler, queue: Promise.resolve(), active: true };
    this.subscribers.add(subscriber);
    return {
      unsubscribe: () => {
        subscriber.active = false;
        this.subscribers.delete(subscriber);
      },
    };
  }

  /** Waits for queued deliveries, then stops accepting events. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.subscribers].map((s) => s.queue));
    this.subscribers.clear();
  }
}
