import { Hono } from 'hono';
import { Counter, collectDefaultMetrics, Registry } from 'prom-client';
import { asHeimdallError, ErrorCodes } from '../../errors/index.ts';
import { fromMessage } from '../../events/index.ts';
import type { Logger } from '../../logging/index.ts';
import type { EventSubscriber } from '../subscriber.ts';
import type { FunctionLifecycle } from './lifecycle.ts';
import { invalidEventReply } from './reply.ts';

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
  app.get('/health/liveness', (c) => c.json({ status: lifecycle.state }));
  app.get('/health/readiness', (c) => c.json({ status: lifecycle.state }, lifecycle.state === 'ready' ? 200 : 503));
  app.get('/metrics', async (c) => c.body(await registry.metrics(), 200, { 'content-type': registry.contentType }));
  app.post('/', async (c) => {
    if (lifecycle.state !== 'ready') return c.json({ status: lifecycle.state }, 503);
    try {
      const event = fromMessage(c.req.raw.headers, await c.req.text());
      subscriber.accept(event);
      received.inc({ type: event.type });
      return c.body(null, 202);
    } catch (error) {
      const failure = asHeimdallError(error, ErrorCodes.INVALID_EVENT);
      logger.warn({ err: failure }, `${name}: invalid event rejected`);
      return invalidEventReply(failure);
    }
  });
  app.all('/', (c) => c.body(null, 405, { allow: 'POST' }));
  return app;
}
