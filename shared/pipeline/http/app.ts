import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Hono } from 'hono';
import { asHeimdallError, ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { fromMessage, type AnyCloudEvent } from '../../events/index.ts';
import { executeStage, type StageEnvironment } from '../execute.ts';
import type { AnyStage } from '../stage.ts';
import { FunctionLifecycle } from './lifecycle.ts';
import { FunctionMetrics } from './metrics.ts';
import { eventReply, invalidEventReply } from './reply.ts';

/**
 * One stage as a Knative function (DESIGN §3): `POST /` takes a CloudEvent in binary or structured
 * mode and answers with the result event in binary mode (status codes: reply.ts); health endpoints
 * for the kubelet and `/metrics` for Prometheus. `environment.scratchDir` is the process's scratch
 * dir; each event gets a directory of its own inside it, removed after the event.
 */
export function createFunctionApp(stage: AnyStage, environment: StageEnvironment, lifecycle = new FunctionLifecycle('ready')): Hono {
  const metrics = new FunctionMetrics(stage.name, () => lifecycle.inFlight);
  const logger = environment.logger.child({ function: stage.name });
  const app = new Hono();

  app.get('/health/liveness', (c) => c.json({ status: lifecycle.state }));
  app.get('/health/readiness', (c) => c.json({ status: lifecycle.state }, lifecycle.state === 'ready' ? 200 : 503));
  app.get('/metrics', async (c) => c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType }));

  app.post('/', async (c) => {
    // Starting or draining: 503 makes the Broker deliver again, to a pod that is ready.
    if (lifecycle.state !== 'ready') return c.json({ status: lifecycle.state }, 503);
    return lifecycle.track(async () => {
      let event: AnyCloudEvent;
      try {
        event = fromMessage(c.req.raw.headers, await c.req.text());
      } catch (error) {
        const failure = asHeimdallError(error, ErrorCodes.INVALID_EVENT);
        metrics.rejected(c.req.header('ce-type'), failure.code);
        return invalidEventReply(failure);
      }
      if (event.type !== stage.input) {
        metrics.rejected(event.type, ErrorCodes.INVALID_EVENT);
        return invalidEventReply(new HeimdallError(ErrorCodes.INVALID_EVENT, `function ${stage.name} consumes ${stage.input}, not ${event.type}`));
      }
      const started = performance.now();
      const scratchDir = await mkdtemp(join(environment.scratchDir, `${stage.name}-`));
      let result: AnyCloudEvent;
      try {
        // The request's signal aborts when the sender hangs up (its delivery timeout): stop working, it will retry.
        result = await executeStage(stage, event, { ...environment, scratchDir }, { signal: c.req.raw.signal });
      } finally {
        await rm(scratchDir, { recursive: true, force: true });
      }
      const seconds = (performance.now() - started) / 1000;
      metrics.handled(event, result, seconds);
      if (result.type === 'heimdall.pipeline.failed') logger.warn({ event: event.id, error: result.data.error, retriable: result.data.retriable, seconds }, 'stage failed');
      else logger.info({ event: event.id, result: result.type, seconds }, 'event handled');
      return eventReply(result);
    });
  });
  // Knative's sink contract: any other method on the event endpoint is 405.
  app.all('/', (c) => c.body(null, 405, { allow: 'POST' }));

  app.onError((error, c) => {
    logger.error({ err: error }, 'request failed');
    const failure = asHeimdallError(error);
    return c.json({ error: { code: failure.code, message: failure.message } }, 500);
  });
  return app;
}
