import { Hono } from 'hono';
import { Counter, collectDefaultMetrics, Registry } from 'prom-client';
import { asHeimdallError, ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { failureOn } from '../failure.ts';
import { CONSUMER_OF } from '../stage.ts';
import { fromHttp } from '../../events/index.ts';
import type { Logger } from '../../logging/index.ts';
import type { EventSubscriber } from '../subscriber.ts';
import type { FunctionLifecycle } from './lifecycle.ts';
import { invalidEventReply } from './reply.ts';
import { onlyPost, operationalRoutes } from './routes.ts';

/**
 * A subscriber behind Knative's HTTP delivery: `POST /` takes any valid Heimdall event, hands it to
 * the subscriber (which returns at once and delivers in the background) and answers 202 with no
 * reply event; 400 with the reason for what is not a valid event. Health and metrics as the stage
 * functions have them.
 */
export function createSubscriberApp(name: string, subscriber: EventSubscriber, logger: Logger, lifecycle: FunctionLifecycle): Hono {
  const registry = new Registry();
  registry.setDefaultLabels({ function: name });
  collectDefaultMetrics({ register: registry });
  const received = new Counter({ name: 'heimdall_events_received_total', help: 'Events handed to the subscriber, by type', labelNames: ['type'], registers: [registry] });
  const app = new Hono();
  operationalRoutes(app, lifecycle, registry);
  app.post('/', async (c) => {
    try {
      const event = fromHttp(c.req.raw.headers, await c.req.text());
      subscriber.accept(event);
      received.inc({ type: event.type });
      return c.body(null, 202);
    } catch (error) {
      const failure = asHeimdallError(error, ErrorCodes.INVALID_EVENT);
      logger.warn({ err: failure }, `${name}: invalid event rejected`);
      return invalidEventReply(failure);
    }
  });
  // Knative's dead-letter sink (a Trigger's `deadLetterSink` with `uri: /dead-letter`): the event a
  // stage never answered successfully, after the Trigger's retries. It becomes that stage's failure.
  app.post('/dead-letter', async (c) => {
    try {
      const event = fromHttp(c.req.raw.headers, await c.req.text());
      const stage = CONSUMER_OF[event.type];
      received.inc({ type: `dead-letter:${event.type}` });
      if (!stage) {
        logger.warn({ event: event.id }, `${name}: dead letter of ${event.type}, which no stage consumes`);
        return c.body(null, 202);
      }
      const destination = c.req.header('ce-knativeerrordest') ?? `the ${stage} function`;
      const status = c.req.header('ce-knativeerrorcode');
      const error = new HeimdallError(ErrorCodes.DELIVERY_EXHAUSTED, `${event.type} ${event.id} was not handled by ${destination}${status ? ` (HTTP ${status})` : ''} after the Trigger's retries`);
      subscriber.accept(failureOn(event, stage, error));
      return c.body(null, 202);
    } catch (error) {
      return invalidEventReply(asHeimdallError(error, ErrorCodes.INVALID_EVENT));
    }
  });
  onlyPost(app);
  return app;
}
