import { inContext, type AnyCloudEvent } from '../events/index.ts';
import { GATE_ACTOR, promotedEvent } from '../gate/promotion.ts';

/**
 * What a runner publishes right after a stage's result, in order: handlers stay pure (one event
 * out), and this is the one place that says what else a result announces. Today that is the
 * `model.promoted` a registration implies when the gate moved the alias, one per model whose alias
 * it moved (the fp32 model's, then each variant's). It is derived from the
 * result alone, so every runner and transport gets the same events (a result that crossed HTTP
 * still carries all it needs), and a redelivered registration, which finds the alias already on
 * its version, announces the same promotion again under the same id (JetStream drops it when the
 * first one was published; publishes it when a crash came in between). A follow-up is made in the
 * same span as its result (the stage's), so it carries the result's trace context unchanged.
 */
export function followUps(result: AnyCloudEvent): AnyCloudEvent[] {
  if (result.type !== 'heimdall.model.registered') return [];
  const { runId } = result.data;
  const moves = [
    ...(result.data.alias.moved ? [{ registry: result.data.registry, alias: result.data.alias }] : []),
    // Each variant whose alias moved too (under its own name), after the fp32 model's.
    ...(result.data.variants ?? []).flatMap((v) => (v.registry && v.alias?.moved ? [{ registry: v.registry, alias: v.alias, variant: v.name }] : [])),
  ];
  return moves.map(({ registry, alias, ...variant }) => {
    const move = { runId, name: registry.name, version: registry.version, alias: alias.name, ...(alias.previous ? { previous: alias.previous } : {}), reason: 'gate passed' as const, actor: GATE_ACTOR, ...variant };
    const promoted = promotedEvent(move, new Date(result.time));
    return result.traceparent ? inContext(promoted, { traceparent: result.traceparent, ...(result.tracestate ? { tracestate: result.tracestate } : {}) }) : promoted;
  });
}
