import { Hono } from 'hono';
import { asHeimdallError, ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { fromHttp, traceFields, type AnyCloudEvent } from '../../events/index.ts';
import { httpSink } from '../../bus/http-sink.ts';
import { executeStage, type StageEnvironment } from '../execute.ts';
import { followUps } from '../follow-ups.ts';
import type { AnyStage } from '../stage.ts';
import { FunctionLifecycle } from './lifecycle.ts';
import { FunctionMetrics } from './metrics.ts';
import { eventReply, invalidEventReply } from './reply.ts';
import { onlyPost, operationalRoutes } from './routes.ts';

/**
 * One stage as a Knative function (DESIGN §3): `POST /` takes a CloudEvent in binary or structured
 * mode and answers with the result event in binary mode (status codes: reply.ts); health endpoints
 * for the kubelet and `/metrics` for Prometheus (routes.ts). The trace context comes from the
 * event, or from the W3C `traceparent`/`tracestate` headers Knative sets when the event has none;
 * the reply continues it (executeStage) and carries it in both forms.
 *
 * A reply is one event, so what follows from a result (follow-ups.ts: the `model.promoted` of a
 * registration that moved the alias) is posted to the Broker at K_SINK (a SinkBinding on the
 * function, as for the ingest adapter) before the reply: a failed post fails the request, the
 * Broker delivers again, and the redelivery posts it again. Without K_SINK (`heimdall serve
 * --http`) the local broker announces the reply's follow-ups itself (broker.ts).
 */
export function createFunctionApp(stage: AnyStage, environment: StageEnvironment, lifecycle = new FunctionLifecycle('ready')): Hono {
  const metrics = new FunctionMetrics(stage.name, () => lifecycle.inFlight);
  const logger = environment.logger.child({ function: stage.name });
  const sink = environment.config.sink ? httpSink(environment.config.sink) : undefined;
  const app = new Hono();

  operationalRoutes(app, lifecycle, metrics.registry);

  app.post('/', async (c) =>
    lifecycle.track(async () => {
      let event: AnyCloudEvent;
      try {
        event = fromHttp(c.req.raw.headers, await c.req.text());
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
      // The request's signal aborts when the sender hangs up (its delivery timeout): stop working, it will retry.
      const result = await executeStage(stage, event, environment, { signal: c.req.raw.signal });
      if (sink) for (const followUp of followUps(result)) await sink(followUp);
      const seconds = (performance.now() - started) / 1000;
      metrics.handled(event, result, seconds);
      const trace = traceFields(result);
      if (result.type === 'heimdall.pipeline.failed') logger.warn({ event: event.id, ...trace, error: result.data.error, retriable: result.data.retriable, seconds }, 'stage failed');
      else logger.info({ event: event.id, ...trace, result: result.type, seconds }, 'event handled');
      return eventReply(result);
    }),
  );
  onlyPost(app);

  app.onError((error, c) => {
    logger.error({ err: error }, 'request failed');
    const failure = asHeimdallError(error);
    return c.json({ error: { code: failure.code, message: failure.message } }, 500);
  });
  return app;
}
