import { createEvent, type CloudEvent } from '../events/index.ts';
import type { PromotionReason } from '../events/schemas.ts';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { PIPELINE_RUN_TAG, type AliasChange, type ModelRegistry } from '../registry/model-registry.ts';

export interface Promotion {
  readonly name: string;
  readonly alias: string;
  readonly version: string;
  readonly reason: PromotionReason;
  /** `heimdall/register` for the gate, the user's name for the CLI. */
  readonly actor: string;
}

/** Who moves an alias when the gate passes (the `actor` of its moves and events). */
export const GATE_ACTOR = 'heimdall/register';

/**
 * Points an alias at a version (the one way aliases move: the gate and `heimdall promote` /
 * `rollback` alike) and returns the `model.promoted` event to publish, or undefined when the alias
 * already named that version.
 */
export async function promote(registry: ModelRegistry, promotion: Promotion, now = new Date()): Promise<{ previous?: string; event?: CloudEvent<'heimdall.model.promoted'> }> {
  const target = await registry.getVersion(promotion.name, promotion.version);
  if (!target) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `${promotion.name} has no version ${promotion.version}`);
  const { previous, moved } = await registry.setAlias(promotion.name, promotion.alias, promotion.version, { reason: promotion.reason, actor: promotion.actor });
  if (!moved) return previous ? { previous } : {};
  const event = promotedEvent({ ...promotion, runId: target.tags[PIPELINE_RUN_TAG] ?? 'unknown', ...(previous ? { previous } : {}) }, now);
  return { ...(previous ? { previous } : {}), event };
}

/**
 * The `model.promoted` event of one move. Its id is deterministic for the gate's moves (a
 * redelivered registration announces the same event, which JetStream drops) and unique per move by hand.
 */
export function promotedEvent(move: Promotion & { readonly runId: string; readonly previous?: string }, now = new Date()): CloudEvent<'heimdall.model.promoted'> {
  const byGate = move.reason === 'gate passed';
  return createEvent('heimdall.model.promoted', {
    stage: byGate ? `promoted.${move.alias}` : `promoted.${move.alias}.${now.getTime()}`,
    source: byGate ? GATE_ACTOR : 'heimdall/cli',
    subject: `${move.name}@${move.alias}`,
    time: now,
    data: { runId: move.runId, name: move.name, version: move.version, alias: move.alias, ...(move.previous ? { previous: move.previous } : {}), reason: move.reason, actor: move.actor },
  });
}

/**
 * The version a rollback returns the alias to: the one that held it before its current holder got
 * it (the last move's `previous`). REGISTRY_REJECTED when the alias never moved or has no earlier holder.
 */
export function rollbackTarget(name: string, alias: string, history: readonly AliasChange[]): string {
  const last = history.at(-1);
  if (!last) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `${name}@${alias} has never been set: nothing to roll back`);
  if (!last.previous) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `${name}@${alias} has had only version ${last.version}: nothing to roll back to`);
  return last.previous;
}
