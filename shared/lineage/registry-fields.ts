import type { Training } from '../events/schemas.ts';
import { TRAINING_METRIC_PREFIX } from '../registry/model-registry.ts';

/** MLflow's param value limit (mlflow/utils/validation.py MAX_PARAM_VAL_LENGTH). */
const MAX_PARAM_LENGTH = 6000;

/**
 * What the registry logs of a model's training (DESIGN §3 Lineage): hyper-parameters as params,
 * epoch, step and metrics as `training.*` metrics, and the same metrics as version tags, which is
 * where the gate's metric check reads the alias holder's (MLflow versions have tags, not metrics).
 */
export function registryFields(training: Training | undefined): { params: Record<string, string>; metrics: Record<string, number>; tags: Record<string, string> } {
  if (!training) return { params: {}, metrics: {}, tags: {} };
  const params = Object.fromEntries(Object.entries(training.hyperParameters).map(([key, value]) => [key, String(value).slice(0, MAX_PARAM_LENGTH)]));
  const metrics: Record<string, number> = {};
  if (training.epoch !== undefined) metrics[`${TRAINING_METRIC_PREFIX}epoch`] = training.epoch;
  if (training.step !== undefined) metrics[`${TRAINING_METRIC_PREFIX}step`] = training.step;
  for (const [key, value] of Object.entries(training.metrics)) if (Number.isFinite(value)) metrics[`${TRAINING_METRIC_PREFIX}${key}`] = value;
  const tags = Object.fromEntries(Object.entries(metrics).map(([key, value]) => [key, String(value)]));
  if (training.mlflowRunId) tags['training_run_id'] = training.mlflowRunId;
  return { params, metrics, tags };
}

const DECIMAL = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

/** The alias holder's value of a training metric, from its version tags (undefined when it has none). */
export function trainingMetricOf(tags: Readonly<Record<string, string>>, metric: string): number | undefined {
  const raw = tags[`${TRAINING_METRIC_PREFIX}${metric}`];
  // Tags can be edited by anyone in MLflow: '' or ' ' would be Number()'s 0, a winning val_loss.
  if (raw === undefined || !DECIMAL.test(raw)) return undefined;
  const value = Number(raw);
  return Number.isFinite(value) ? value : undefined;
}
