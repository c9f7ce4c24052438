/**
 * The ModelRegistry port, with MLflow's semantics (registered models, numbered versions, tags,
 * aliases). Registration is keyed by the model's sha256: registering the same bytes again returns
 * the existing version, so a redelivered event never creates a second one.
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
}

export interface RegistrationRequest {
  readonly name: string;
  readonly alias: string;
  readonly sha256: string;
  /** Our pipeline run id. */
  readonly pipelineRunId: string;
  /** Local path of the ONNX file (the registry may copy it as an artifact). */
  readonly modelPath: string;
  /** Where the model already lives (object store uri). */
  readonly modelUri: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly params: Readonly<Record<string, string>>;
  readonly metrics: Readonly<Record<string, number>>;
  /** The pipeline report, stored beside the model where the registry keeps artifacts. */
  readonly report: unknown;
}

export interface ModelRegistry {
  /** `models:/<name>/<version>`-style uri of a version. */
  modelUri(version: ModelVersion): string;
  getVersionByAlias(name: string, alias: string): Promise<ModelVersion | undefined>;
  findVersionBySha256(name: string, sha256: string): Promise<ModelVersion | undefined>;
  /** Idempotent: returns the existing version when a version with this sha256 exists. Points the alias at the version. */
  register(request: RegistrationRequest): Promise<{ version: ModelVersion; created: boolean }>;
}

export const DEFAULT_MODEL_NAME = 'heimdall-localization';
export const DEFAULT_ALIAS = 'staging';

/** Tag holding the model's sha256: the idempotency key. */
export const SHA256_TAG = 'sha256';
/** Tag holding the batch-1 p50 latency in ms: the next model's benchmark baseline. */
export const LATENCY_TAG = 'latency_p50_batch1_ms';
