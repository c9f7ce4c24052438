import { inContext, type AnyCloudEvent } from '../events/index.ts';
import { GATE_ACTOR, promotedEvent } from '../gate/promotion.ts';

/**
 * What a runner publishes right after a stage's result, in order: handlers stay pure (one event
 * out), and this is the one place that says what else a result announces. Today that is the
 * `model.promoted` a registration implies when the gate moved the alias. It is derived from the
 * result alone, so every runner and transport gets the same events (a result that crossed HTTP
 * still carries all it needs), and a redelivered registration, which finds the alias already on
 * its version, announces the same promotion again under the same id (JetStream drops it when the
 * first one was published; publishes it when a crash came in between). A follow-up is made in the
 * same span as its result (the stage's), so it carries the result's trace context unchanged.
 */
export function followUps(result: AnyCloudEvent): AnyCloudEvent[] {
  if (result.type !== 'heimdall.model.registered' || !result.data.alias.moved) return [];
  const { runId, registry, alias } = result.data;
  const move = { runId, name: registry.name, version: registry.version, alias: alias.name, ...(alias.previous ? { previous: alias.previous } : {}), reason: 'gate passed' as const, actor: GATE_ACTOR };
  const promoted = promotedEvent(move, new Date(result.time));
  return [result.traceparent ? inContext(promoted, { traceparent: result.traceparent, ...(result.tracestate ? { tracestate: result.tracestate } : {}) }) : promoted];
}
