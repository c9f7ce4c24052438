import type { Checkpoint } from '../checkpoint/index.ts';
import type { Training } from '../events/schemas.ts';
import { TRAINING_METRIC_PREFIX } from '../registry/model-registry.ts';

/**
 * What the trainer left beside the weights, as the `training` of the exported event (DESIGN §3
 * Lineage). Where each part comes from:
 *
 * - pickled layouts (develop `.pth`, Lightning `.ckpt`): `epoch`; `global_step` (or `step`) as the
 *   step; every other top-level finite number (`val_loss`, `train_loss`, `loss`, ...) and each
 *   finite number of a top-level `metrics` dict as a metric; Lightning's ModelCheckpoint score
 *   under its `monitor` name where no metric of that name was saved: `current_score` (the score
 *   of the model this file holds), else `best_model_score` (the best of the run so far, which is
 *   another model's in a `last.ckpt` or a top-k file that is not the best);
 *   hyper-parameters from `config` / `hyper_parameters`;
 * - safetensors `__metadata__` (strings only): `epoch`, `global_step` (or `step`) as integers;
 *   a decimal under a metric's name (`train_*`, `val_*`, `valid_*`, `test_*`, or ending in `loss`)
 *   as a metric; every other key but `format` (safetensors' own "pt") as a hyper-parameter;
 * - the training MLflow run: `mlflow_run_id` in the config (or at the top level), else the object's
 *   user metadata `mlflow-run-id`; only a 32-hex MLflow run id counts.
 *
 * Nested hyper-parameters are flattened to `a.b.c`; lists become their JSON. Bounded: at most
 * MAX_HYPER_PARAMETERS and MAX_METRICS entries, keys up to MAX_KEY_CHARS, values up to
 * MAX_VALUE_CHARS. What is left out (a NaN metric, an invalid run id, entries past a bound) is said
 * in `warnings`. Nothing found: no `training`.
 */

export const MAX_HYPER_PARAMETERS = 200;
export const MAX_METRICS = 100;
/** MLflow's key limit (mlflow/utils/validation.py MAX_ENTITY_KEY_LENGTH). */
export const MAX_KEY_CHARS = 250;
/** A metric is logged as `training.<key>`, and MLflow refuses a key over MAX_KEY_CHARS (with it the whole registration). */
const MAX_METRIC_KEY_CHARS = MAX_KEY_CHARS - TRAINING_METRIC_PREFIX.length;
export const MAX_VALUE_CHARS = 500;

const MLFLOW_RUN_ID = /^[0-9a-f]{32}$/;
const RUN_ID_KEY = 'mlflow_run_id';
const OBJECT_RUN_ID_KEY = 'mlflow-run-id';
const STEP_KEYS = ['global_step', 'step'] as const;
const NOT_METRICS: ReadonlySet<string> = new Set(['epoch', ...STEP_KEYS]);
const METRIC_NAME = /^(?:train|val|valid|test)_|loss$/;
const DECIMAL = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
const SAFETENSORS_OWN_KEYS: ReadonlySet<string> = new Set(['format']);

type Scalar = string | number | boolean;
type TrainingSource = Pick<Checkpoint, 'layout' | 'config' | 'trainerState'>;

export interface TrainingRead {
  readonly training?: Training;
  readonly warnings: readonly string[];
}

/** The checkpoint's training lineage; `objectMetadata` is the user metadata of the object it was read from. */
export function readTraining(checkpoint: TrainingSource, objectMetadata: Readonly<Record<string, string>> = {}): TrainingRead {
  const found = new Found();
  if (checkpoint.layout === 'safetensors') fromSafetensorsMetadata(checkpoint.config, found);
  else fromPickled(checkpoint.config, checkpoint.trainerState, found);
  found.runId(`${RUN_ID_KEY} in the checkpoint`, checkpoint.config[RUN_ID_KEY] ?? checkpoint.trainerState[RUN_ID_KEY]);
  const metadataKey = Object.keys(objectMetadata).find((key) => key.toLowerCase() === OBJECT_RUN_ID_KEY);
  if (metadataKey) found.runId(`the object's ${OBJECT_RUN_ID_KEY}`, objectMetadata[metadataKey]);
  return found.result();
}

function fromPickled(config: Readonly<Record<string, unknown>>, state: Readonly<Record<string, unknown>>, found: Found): void {
  found.epoch = nonNegativeInteger(state['epoch']);
  found.step = nonNegativeInteger(STEP_KEYS.map((key) => state[key]).find((v) => v !== undefined));
  for (const [key, value] of Object.entries(state)) {
    if (typeof value === 'number' && !NOT_METRICS.has(key)) found.metric(key, value);
  }
  const metrics = state['metrics'];
  if (isRecord(metrics)) for (const [key, value] of flatten(metrics)) if (typeof value === 'number') found.metric(key, value);
  const callbacks = state['callbacks'];
  if (isRecord(callbacks)) {
    for (const [key, callback] of Object.entries(callbacks)) {
      if (!key.startsWith('ModelCheckpoint') || !isRecord(callback)) continue;
      const { monitor, current_score: current, best_model_score: best } = callback;
      const score = typeof current === 'number' ? current : best;
      if (typeof monitor === 'string' && typeof score === 'number' && !found.hasMetric(monitor)) found.metric(monitor, score);
    }
  }
  for (const [key, value] of flatten(config)) if (key !== RUN_ID_KEY) found.hyperParameter(key, value);
}

function fromSafetensorsMetadata(metadata: Readonly<Record<string, unknown>>, found: Found): void {
  const integer = (key: string) => (typeof metadata[key] === 'string' && /^\d+$/.test(metadata[key]) ? nonNegativeInteger(Number(metadata[key])) : undefined);
  found.epoch = integer('epoch');
  found.step = STEP_KEYS.map(integer).find((v) => v !== undefined);
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string' || NOT_METRICS.has(key) || SAFETENSORS_OWN_KEYS.has(key) || key === RUN_ID_KEY) continue;
    if (METRIC_NAME.test(key) && DECIMAL.test(value)) found.metric(key, Number(value));
    else found.hyperParameter(key, value);
  }
}

/** What has been found so far, within the bounds, and what was left out. */
class Found {
  epoch: number | undefined;
  step: number | undefined;
  private readonly metrics = new Map<string, number>();
  private readonly hyperParameters = new Map<string, Scalar>();
  private mlflowRunId: string | undefined;
  private readonly warnings: string[] = [];
  private readonly dropped = { metrics: 0, hyperParameters: 0 };

  hasMetric(key: string): boolean {
    return this.metrics.has(key);
  }

  metric(key: string, value: number): void {
    if (!Number.isFinite(value)) this.warnings.push(`training metric ${clip(key)} is ${value}: left out`);
    else if (this.metrics.size >= MAX_METRICS || key.length > MAX_METRIC_KEY_CHARS) this.dropped.metrics++;
    else this.metrics.set(key, value);
  }

  hyperParameter(key: string, value: Scalar): void {
    if (this.hyperParameters.size >= MAX_HYPER_PARAMETERS || key.length > MAX_KEY_CHARS) this.dropped.hyperParameters++;
    // A NaN learning rate is still what the trainer said; as text, since events carry JSON.
    else this.hyperParameters.set(key, typeof value === 'string' ? value.slice(0, MAX_VALUE_CHARS) : typeof value === 'number' && !Number.isFinite(value) ? String(value) : value);
  }

  /** The first valid run id wins; an invalid one is said and skipped. */
  runId(where: string, value: unknown): void {
    if (this.mlflowRunId !== undefined || value === undefined || value === null) return;
    if (typeof value === 'string' && MLFLOW_RUN_ID.test(value)) this.mlflowRunId = value;
    else this.warnings.push(`${where} (${clip(String(value))}) is not an MLflow run id (32 lowercase hex digits): ignored`);
  }

  result(): TrainingRead {
    if (this.dropped.metrics > 0) this.warnings.push(`${this.dropped.metrics} training metrics past the first ${MAX_METRICS} (or with keys over ${MAX_METRIC_KEY_CHARS} characters) left out`);
    if (this.dropped.hyperParameters > 0) {
      this.warnings.push(`${this.dropped.hyperParameters} hyper-parameters past the first ${MAX_HYPER_PARAMETERS} (or with keys over ${MAX_KEY_CHARS} characters) left out`);
    }
    const empty = this.epoch === undefined && this.step === undefined && this.metrics.size === 0 && this.hyperParameters.size === 0 && this.mlflowRunId === undefined;
    if (empty) return { warnings: this.warnings };
    return {
      training: {
        ...(this.epoch !== undefined ? { epoch: this.epoch } : {}),
        ...(this.step !== undefined ? { step: this.step } : {}),
        // fromEntries defines own properties: a key like "__proto__" stays a key.
        metrics: Object.fromEntries(this.metrics),
        hyperParameters: Object.fromEntries(this.hyperParameters),
        ...(this.mlflowRunId !== undefined ? { mlflowRunId: this.mlflowRunId } : {}),
      },
      warnings: this.warnings,
    };
  }
}

/**
 * `{a: {b: 1}, c: [1, 2]}` as `a.b` = 1, `c` = "[1,2]": scalars kept, lists as their JSON (cut at
 * MAX_VALUE_CHARS), None and what plain data left out skipped. The checkpoint reader bounded the
 * input (MAX_CONFIG_VALUES values, MAX_CONFIG_DEPTH levels).
 */
function* flatten(value: Readonly<Record<string, unknown>>, prefix = ''): Generator<[string, Scalar]> {
  for (const [key, item] of Object.entries(value)) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (typeof item === 'string' || typeof item === 'boolean' || typeof item === 'number') yield [path, item];
    else if (Array.isArray(item)) yield [path, JSON.stringify(item).slice(0, MAX_VALUE_CHARS)];
    else if (isRecord(item)) yield* flatten(item, path);
  }
}

function isRecord(value: unknown): value is Readonly<Record<string, unknown>> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function nonNegativeInteger(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

const clip = (text: string) => (text.length > 64 ? `${text.slice(0, 64)}...` : text);
