import { createEvent, type CloudEvent } from '../events/index.ts';
import type { PromotionReason, VariantName } from '../events/schemas.ts';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { PIPELINE_RUN_TAG, type AliasChange, type ModelRegistry } from '../registry/model-registry.ts';

export interface Promotion {
  readonly name: string;
  readonly alias: string;
  readonly version: string;
  readonly reason: PromotionReason;
  /** `heimdall/register` for the gate, the user's name for the CLI. */
  readonly actor: string;
  /**
   * The version the caller saw holding the alias (null: unset) when it decided; the move is then
   * refused (REGISTRY_ERROR, retriable) if someone moved the alias meanwhile. Absent for moves by hand.
   */
  readonly expectedHolder?: string | null;
}

/** Who moves an alias when the gate passes (the `actor` of its moves and events). */
export const GATE_ACTOR = 'heimdall/register';

/**
 * The longest alias name Heimdall moves on MLflow: MLflow takes 255 characters
 * (MAX_REGISTERED_MODEL_ALIAS_LENGTH), but each alias's history lives in the registered-model tag
 * `heimdall.alias_history.<alias>` (mlflow/registry.ts), whose key MLflow limits to 250
 * (MAX_MODEL_REGISTRY_TAG_KEY_LENGTH): 250 - 23 = 227.
 */
const MAX_ALIAS_LENGTH = 250 - 'heimdall.alias_history.'.length;

/**
 * Refuses (USAGE) an alias name MLflow refuses, by the rules of MLflow's `_validate_model_alias_name`
 * and `_validate_model_alias_name_reserved` (mlflow/utils/validation.py): not empty, only
 * alphanumerics (Unicode letters and digits, as Python's `\w`), `_` and `-`, at most 227
 * characters (MLflow's 255, less what our history tag's key needs; a newline, which Python's `$`
 * lets through, is refused too), and neither `latest` (any case) nor a version alias `v<digits>` / `V<digits>`.
 * Applied to every registry alike, so an alias valid locally stays valid on MLflow.
 */
export function checkAliasName(alias: string): void {
  const refuse = (why: string) => {
    throw new HeimdallError(ErrorCodes.USAGE, `invalid alias name ${JSON.stringify(alias)}: ${why}`);
  };
  if (alias === '') refuse('it is empty');
  if (!/^[\p{L}\p{N}_-]+$/u.test(alias)) refuse('names may only contain alphanumerics, underscores (_) and dashes (-)');
  if ([...alias].length > MAX_ALIAS_LENGTH) refuse(`it is longer than ${MAX_ALIAS_LENGTH} characters`);
  if (alias.toLowerCase() === 'latest') refuse("'latest' (in any case) is reserved by MLflow");
  if (/^[vV]\p{Nd}+$/u.test(alias)) refuse('v<number> is reserved by MLflow for version aliases');
}

/**
 * Points an alias at a version (the one way aliases move: the gate and `heimdall promote` /
 * `rollback` alike) and returns the `model.promoted` event to publish, or undefined when the alias
 * already named that version. USAGE for an alias name MLflow refuses (checkAliasName), before the
 * registry is touched; with `expectedHolder`, a compare-and-set move (ModelRegistry.setAlias).
 */
export async function promote(registry: ModelRegistry, promotion: Promotion, now = new Date()): Promise<{ previous?: string; event?: CloudEvent<'heimdall.model.promoted'> }> {
  checkAliasName(promotion.alias);
  const target = await registry.getVersion(promotion.name, promotion.version);
  if (!target) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `${promotion.name} has no version ${promotion.version}`);
  const { previous, moved } = await registry.setAlias(promotion.name, promotion.alias, promotion.version, {
    reason: promotion.reason,
    actor: promotion.actor,
    ...(promotion.expectedHolder !== undefined ? { expectedHolder: promotion.expectedHolder } : {}),
  });
  if (!moved) return previous ? { previous } : {};
  const event = promotedEvent({ ...promotion, runId: target.tags[PIPELINE_RUN_TAG] ?? 'unknown', ...(previous ? { previous } : {}) }, now);
  return { ...(previous ? { previous } : {}), event };
}

/**
 * The `model.promoted` event of one move. Its id is deterministic for the gate's moves (a
 * redelivered registration announces the same event, which JetStream drops) and unique per move by
 * hand. A variant's move by the gate (`variant` set) is `<runId>.promoted.<variant>.<alias>`: the
 * run moves the same alias of the fp32 model's name too, and alias names have no dots.
 */
export function promotedEvent(move: Promotion & { readonly runId: string; readonly previous?: string; readonly variant?: VariantName }, now = new Date()): CloudEvent<'heimdall.model.promoted'> {
  const byGate = move.reason === 'gate passed';
  return createEvent('heimdall.model.promoted', {
    stage: byGate ? `promoted.${move.variant ? `${move.variant}.` : ''}${move.alias}` : `promoted.${move.alias}.${now.getTime()}`,
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
