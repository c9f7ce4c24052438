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
  /** Takes an event and returns at once: a subscriber never blocks or slows the pipeline. */
  accept(event: AnyCloudEvent): void;
  /** Stops taking events and waits at most `timeoutMs` for the work in flight. */
  close(timeoutMs: number): Promise<void>;
}

/** A subscriber function: its name (`heimdall function <name>`) and how to build it from configuration. */
export interface SubscriberFunction {
  readonly name: string;
  /** Undefined when it is not configured (e.g. no webhook URL). */
  create(config: Config, logger: Logger): EventSubscriber | undefined;
}

/** Feeds a subscriber from an event bus (the NATS runner's way; `heimdall run` feeds it from onEvent). */
export function attachSubscriber(bus: EventBus, subscriber: EventSubscriber): Subscription {
  return bus.subscribe(subscriber.types, async (event) => subscriber.accept(event));
}
