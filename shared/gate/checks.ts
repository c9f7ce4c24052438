import type { GateConfig } from '../config/index.ts';
import type { Baseline, GateCheck, GatePolicy, GateVerdict, Training } from '../events/schemas.ts';
import { trainingMetricOf } from '../lineage/registry-fields.ts';
import type { ModelVersion } from '../registry/model-registry.ts';

export interface GateInputs {
  readonly config: GateConfig;
  /** The version holding the alias the candidate would take; undefined for the first model of a name. */
  readonly holder?: Pick<ModelVersion, 'version' | 'tags'>;
  /** The benchmark's interleaved timing of candidate and holder (`benchmarked.baseline`). */
  readonly baseline?: Baseline;
  /** The candidate's lineage (`training` of its events). */
  readonly training?: Training;
  /** For a variant: its largest absolute error against the fp32 model's outputs (parity's samples), and its tolerance. */
  readonly accuracy?: { readonly maxAbs: number; readonly tolerance: number };
}

/**
 * The gate before the alias moves (DESIGN §3 The gate and promotion), a pure function of what the
 * benchmark measured and what the trainer recorded. Each configured check compares the candidate
 * with the alias holder; a check that has nothing to compare (no holder, a figure missing on one
 * side) passes and says why, so the first model of a name, or one from a trainer that logs no
 * metric, is never stuck. A variant adds its accuracy against the fp32 model (always `block`). The
 * verdict passes unless a check with policy `block` failed.
 */
export function decideGate(inputs: GateInputs): GateVerdict {
  const { latency, metric } = inputs.config;
  const checks = [
    ...(latency === 'off' ? [] : [latencyCheck(inputs, latency)]),
    ...(metric ? [metricCheck(inputs, metric)] : []),
    ...(inputs.accuracy ? [accuracyCheck(inputs.accuracy)] : []),
  ];
  return { passed: !checks.some((check) => !check.passed && check.policy === 'block'), checks };
}

/** A regression when the lower bound of the batch-1 p50 ratio's interval is past 1 + threshold (the benchmark's `regression`). */
function latencyCheck({ holder, baseline }: GateInputs, policy: GatePolicy): GateCheck {
  if (!holder) return notCompared('latency', policy, 'first model of its name: nothing to compare with');
  if (!baseline) return notCompared('latency', policy, `not compared: the benchmark did not time v${holder.version}`);
  const [low, high] = baseline.ratioInterval;
  const limit = 1 + baseline.threshold;
  const measured = `${baseline.ratio.toFixed(2)}x [${low.toFixed(2)}, ${high.toFixed(2)}] of v${baseline.version} ${baseline.regression ? '>' : '<='} ${limit.toFixed(2)}`;
  // Another run moved the alias between this run's benchmark and its registration. A model found
  // slower than a version that held the alias is held back still (it never passes by a race); one
  // that was not is let through on that comparison, and the detail says which version it was.
  const stale = baseline.version !== holder.version ? `; v${holder.version} holds the alias now, not timed` : '';
  return { name: 'latency', passed: !baseline.regression, value: low, limit, policy, detail: `${measured}${stale}` };
}

/** The candidate's training metric may be worse than the holder's by at most the tolerance. */
function metricCheck({ holder, training }: GateInputs, metric: NonNullable<GateConfig['metric']>): GateCheck {
  const { name, better, tolerance, policy } = metric;
  if (!holder) return notCompared('metric', policy, 'first model of its name: nothing to compare with');
  const candidate = training?.metrics[name];
  const held = trainingMetricOf(holder.tags, name);
  if (candidate === undefined || !Number.isFinite(candidate)) return notCompared('metric', policy, `${name} not compared: the candidate has none`);
  if (held === undefined) return notCompared('metric', policy, `${name} not compared: v${holder.version} has none`);
  const limit = better === 'lower' ? held + tolerance : held - tolerance;
  const passed = better === 'lower' ? candidate <= limit : candidate >= limit;
  const [worse, within] = better === 'lower' ? ['>', '<='] : ['<', '>='];
  return {
    name: 'metric',
    passed,
    value: candidate,
    limit,
    policy,
    detail: `${name} ${figure(candidate)} ${passed ? within : worse} v${holder.version}'s ${figure(held)} ${better === 'lower' ? '+' : '-'} tolerance ${figure(tolerance)}`,
  };
}

/**
 * A variant is no worse than its tolerance against the fp32 model it was derived from. Parity holds
 * back a variant over it before the benchmark; the check puts the figure in the verdict on record
 * and keeps the rule where the alias decision is, so no variant over its tolerance ever takes one.
 */
function accuracyCheck({ maxAbs, tolerance }: NonNullable<GateInputs['accuracy']>): GateCheck {
  const passed = maxAbs <= tolerance;
  return { name: 'accuracy', passed, value: maxAbs, limit: tolerance, policy: 'block', detail: `max |diff| ${maxAbs.toExponential(2)} against the fp32 model ${passed ? '<=' : '>'} tolerance ${tolerance}` };
}

function notCompared(name: GateCheck['name'], policy: GatePolicy, detail: string): GateCheck {
  return { name, passed: true, value: null, limit: null, policy, detail };
}

/** Four significant digits: enough to tell two losses apart, short enough for one line. */
const figure = (value: number) => String(Number(value.toPrecision(4)));
