import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { fromHttp, toHttp, type AnyCloudEvent } from '../../events/index.ts';
import { failureOn } from '../failure.ts';
import { announce, retryDelayMs, startStage, type ProcessorEnvironment } from '../nats/processors.ts';
import { startWorker, type Processor, type WorkerOptions } from '../nats/worker.ts';
import type { AnyStage } from '../stage.ts';

/** A Trigger: events of the stage's input type go to its function's `POST /`. */
export interface Route {
  readonly stage: AnyStage;
  readonly url: string;
}

/**
 * A local stand-in for Knative's NATS JetStream Broker (`heimdall serve --http`): for each Trigger a
 * durable consumer on the stage's input posts the event to the function and publishes its reply,
 * with the Broker's reading of status codes (reply.ts): 200 delivered (reply published, with its
 * follow-ups: the functions here have no K_SINK to post them to, app.ts), 400 and 415 not
 * retried, anything else retried with backoff; on the last delivery the function's failure event
 * (or one of our own when it sent none) is published, as a dead-letter sink would receive it.
 * Events go out with their trace context as `ce-traceparent` and as the W3C headers, as Knative's
 * Broker delivers them.
 */
export async function startLocalBroker(routes: readonly Route[], env: ProcessorEnvironment, options: WorkerOptions) {
  const workers = await Promise.all(routes.map((route) => startWorker(route.stage.name, deliverTo(route, env), { ...options, durable: `heimdall-http-${route.stage.name}` })));
  return { stop: () => Promise.all(workers.map((w) => w.stop())).then(() => undefined) };
}

function deliverTo(route: Route, env: ProcessorEnvironment): Processor {
  const { stage, url } = route;
  return async (delivery) => {
    const event = await startStage(stage, delivery, env);
    if ('kind' in event) return event;
    const { headers, body } = toHttp(event);
    let reply: AnyCloudEvent | undefined;
    let status: number;
    try {
      const response = await fetch(url, { method: 'POST', headers, body, signal: delivery.signal });
      status = response.status;
      const text = await response.text();
      if (response.headers.has('ce-specversion')) reply = fromHttp(response.headers, text);
    } catch (error) {
      status = 0;
      env.logger.warn({ err: error, url }, `broker: ${stage.name} unreachable`);
    }
    if (status === 200 && reply) {
      await announce(reply, env);
      return { kind: 'ack' };
    }
    if (status === 400 || status === 415) {
      env.logger.warn({ event: event.id, stage: stage.name }, `broker: function rejected the event (${status}); not retried`);
      return { kind: 'term', reason: `rejected with ${status}` };
    }
    if (delivery.attempt < delivery.maxDeliver) return { kind: 'retry', delayMs: retryDelayMs(delivery.attempt) };
    const failure = reply ?? failureOn(event, stage.name, new HeimdallError(ErrorCodes.DELIVERY_EXHAUSTED, `${stage.name} answered ${status || 'nothing'} on ${delivery.attempt} deliveries`), delivery.attempt);
    await announce(failure, env);
    return { kind: 'ack' };
  };
}
