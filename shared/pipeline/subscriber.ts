import type { EventBus, Subscription } from '../bus/event-bus.ts';
import type { Config } from '../config/index.ts';
import type { AnyCloudEvent, EventType } from '../events/index.ts';
import type { Logger } from '../logging/index.ts';

/**
 * A function that only listens to pipeline events (alerts): it publishes nothing, so runners feed it
 * the events they see instead of running it as a stage. Like the stages, subscribers come from
 * functions/ and are handed in by bin/ (DESIGN §2: shared/ never imports functions/).
 */
export interface EventSubscriber {
  /** The event types it acts on (what a bus subscription filters on); it ignores any other. */
  readonly types: readonly EventType[];
  /**
   * Takes an event and returns at once, with a promise that settles (never rejects) when the
   * subscriber is done with it. A durable runner (NATS) acknowledges the event only then, and
   * offers it again after `later`'s delay; runners that cannot redeliver (`heimdall run`, the HTTP
   * function, which answers at once) need not wait. A subscriber never blocks or slows the pipeline:
   * it has its own consumer. It may be offered an event again (a redelivery), and acts on it once.
   */
  accept(event: AnyCloudEvent): Promise<Handled>;
  /** Stops taking events and waits at most `timeoutMs` for the work in flight; what is left is handed back (`later`, no delay). */
  close(timeoutMs: number): Promise<void>;
}

/**
 * What a subscriber made of an event: `done` (acted on, nothing to do, or given up on for good), or
 * `later`: its effect could not be had now (a webhook down), and the event should be offered again
 * after `delayMs`.
 */
export type Handled = { readonly kind: 'done' } | { readonly kind: 'later'; readonly delayMs: number };

/** A subscriber function: its name (`heimdall function <name>`) and how to build it from configuration. */
export interface SubscriberFunction {
  readonly name: string;
  /** Undefined when it is not configured (e.g. no webhook URL). */
  create(config: Config, logger: Logger): EventSubscriber | undefined;
}

/** Feeds a subscriber from an in-memory event bus, without waiting for it (nothing would redeliver): the embedded runner's way. */
export function attachSubscriber(bus: EventBus, subscriber: EventSubscriber): Subscription {
  return bus.subscribe(subscriber.types, async (event) => void subscriber.accept(event));
}
