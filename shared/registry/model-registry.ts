import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { PromotionReason } from '../events/schemas.ts';

/**
 * The ModelRegistry port, with MLflow's semantics (registered models, numbered versions, tags,
 * aliases). Registration is keyed by the model's sha256: registering the same bytes again returns
 * the existing version, so a redelivered event never creates a second one. Registering never moves
 * an alias: the gate decides (DESIGN §3 The gate and promotion) and calls `setAlias`.
 */
export interface ModelVersion {
  readonly name: string;
  readonly version: string;
  /** Where the registry serves the model from (`models:/name/version` resolves to this). */
  readonly source: string;
  /** The registry-side run that produced it (MLflow run id; the pipeline run id locally). */
  readonly runId: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly aliases: readonly string[];
  /** When the version was created (ISO 8601). */
  readonly created: string;
}

export interface RegistrationRequest {
  readonly name: string;
  readonly sha256: string;
  /** Our pipeline run id. */
  readonly pipelineRunId: string;
  /** Local path of the ONNX file (the registry may copy it as an artifact). */
  readonly modelPath: string;
  /** Local path of its external data file, when it has one: copied beside it under this file's name, which the model refers to it by. */
  readonly externalDataPath?: string;
  /** Where the model already lives (object store uri). */
  readonly modelUri: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly params: Readonly<Record<string, string>>;
  readonly metrics: Readonly<Record<string, number>>;
  /** The training run that produced the checkpoint (an MLflow run id), when the trainer left one. */
  readonly trainingRunId?: string;
  /** The pipeline report, stored beside the model where the registry keeps artifacts. */
  readonly report: unknown;
}

/** One move of an alias, kept by the registry (oldest first): what `heimdall versions` and rollback read. */
export interface AliasChange {
  readonly version: string;
  /** The version that held the alias before; absent for the first. */
  readonly previous?: string;
  /** ISO 8601. */
  readonly at: string;
  readonly reason: PromotionReason;
  readonly actor: string;
}

export interface ModelRegistry {
  /** `models:/<name>/<version>`-style uri of a version. */
  modelUri(version: ModelVersion): string;
  getVersion(name: string, version: string): Promise<ModelVersion | undefined>;
  getVersionByAlias(name: string, alias: string): Promise<ModelVersion | undefined>;
  findVersionBySha256(name: string, sha256: string): Promise<ModelVersion | undefined>;
  /** Every version of `name`, lowest number first; [] for an unknown name. */
  listVersions(name: string): Promise<ModelVersion[]>;
  /** Idempotent: returns the existing version when a version with this sha256 exists. Moves no alias. */
  register(request: RegistrationRequest): Promise<{ version: ModelVersion; created: boolean }>;
  /**
   * Points `alias` at `version` and appends the move to the alias history. Setting the alias to
   * the version it already names changes nothing and records nothing (a redelivery).
   * REGISTRY_REJECTED for an unknown version.
   *
   * Compare-and-set when `change.expectedHolder` is given (the version the caller saw holding the
   * alias, or null for "unset"): when the alias names neither `expectedHolder` nor `version` any
   * more, nothing moves and nothing is recorded: REGISTRY_ERROR `<name>@<alias> moved to v<X>
   * meanwhile (expected v<Y>|unset): …`, retriable on purpose (the gate's stage is redelivered and
   * decides again against the new holder). Without it the alias moves whoever holds it (moves by hand).
   */
  setAlias(name: string, alias: string, version: string, change: { reason: PromotionReason; actor: string; expectedHolder?: string | null }): Promise<{ previous?: string; moved: boolean }>;
  /** Alias -> its moves, oldest first (every alias of `name` that ever moved). */
  aliasHistory(name: string): Promise<Record<string, AliasChange[]>>;
}

export const DEFAULT_MODEL_NAME = 'heimdall-localization';
export const DEFAULT_ALIAS = 'staging';

/** Tag holding the model's sha256: the idempotency key. */
export const SHA256_TAG = 'sha256';
/** Tag holding the pipeline run id that produced a version (`model.promoted` names it). */
export const PIPELINE_RUN_TAG = 'pipeline_run_id';
/** Tag holding the object-store uri of the ONNX file: what the next benchmark times as the alias holder. */
export const ONNX_URI_TAG = 'onnx_uri';
/** Tag holding the gate's verdict (GateVerdict as JSON). */
export const GATE_TAG = 'heimdall.gate';
/** Prefix of the tags holding the training metrics (`training.val_loss`): what the metric check compares. */
export const TRAINING_METRIC_PREFIX = 'training.';

/**
 * The compare-and-set of `setAlias`: refuses (retriable: the gate decides again against the new
 * holder) when an expected holder was given and the alias names another version now.
 */
export function checkExpectedHolder(name: string, alias: string, version: string, holder: string | undefined, expected: string | null | undefined): void {
  if (expected === undefined || holder === (expected ?? undefined)) return;
  const named = (v: string | null | undefined) => (v == null ? 'unset' : `v${v}`);
  throw new HeimdallError(ErrorCodes.REGISTRY_ERROR, `${name}@${alias} moved to ${named(holder)} meanwhile (expected ${named(expected)}): not moving it to v${version}; the gate decides again against the new holder`);
}
