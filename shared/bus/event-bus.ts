import type { AnyCloudEvent } from '../events/index.ts';
import type { EventType } from '../events/schemas.ts';

/**
 * The EventBus port. Delivery is at least once; publishing an event whose id was already published
 * is a no-op (JetStream's Nats-Msg-Id deduplication, and the same here), so re-running a stage can
 * never announce a result twice.
 */
export interface EventBus {
  /** True when the event was new; false when it was dropped as a duplicate of one already published. */
  publish(event: AnyCloudEvent): Promise<boolean>;
  /** Handlers run one event at a time per subscription, in publication order. */
  subscribe(types: readonly EventType[] | '*', handler: (event: AnyCloudEvent) => Promise<void>): Subscription;
  close(): Promise<void>;
}

export interface Subscription {
  unsubscribe(): void;
}
