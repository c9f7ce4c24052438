import { z } from 'zod';
import { isBucketName } from '../storage/object-store.ts';

/**
 * One zod schema per event type of DESIGN §3. Stages may add fields; the ones listed in the design
 * are required. Shared pieces (the ONNX artifact, the checkpoint) are defined once.
 */

export const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'a lowercase hex sha256');
export const RunId = z.string().regex(/^[0-9a-f]{16}$/, 'the first 16 hex digits of the checkpoint sha256');

/**
 * Where an object lives, as `ObjectStore.uri()` writes it: absolute `s3://bucket/key` (a valid
 * bucket name, a non-empty key) or `file:///path`. Anything else (`http://`, a relative path, an
 * empty string) is an event of the wrong shape, refused before a stage runs; which of the two forms
 * the running store reads is checked when the object is fetched (`locateUri`).
 */
export const ObjectUri = z.string().refine(isObjectUri, 'must be an absolute s3://bucket/key or file:///path uri');

export function isObjectUri(uri: string): boolean {
  const s3 = /^s3:\/\/([^/]+)\/(.+)$/.exec(uri);
  if (s3) return isBucketName(s3[1]!);
  return /^file:\/\/\/./.test(uri) && URL.canParse(uri);
}

export const OnnxArtifact = z.object({
  uri: ObjectUri,
  /** Of the ONNX file; for a model with external data it names the data file's digest (`external_data_sha256`), so it stands for the weights too. */
  sha256: Sha256,
  bytes: z.number().int().nonnegative(),
  opset: z.number().int(),
  irVersion: z.number().int(),
  /** The weights' file stored beside the model (`<uri>.data`), when the model keeps them there (DESIGN §3 storage layout). */
  externalData: z.object({ uri: ObjectUri, sha256: Sha256, bytes: z.number().int().nonnegative() }).optional(),
});
export type OnnxArtifact = z.infer<typeof OnnxArtifact>;
/** What the model takes in storage: its ONNX file and its external data file. */
export const modelBytes = (onnx: OnnxArtifact) => onnx.bytes + (onnx.externalData?.bytes ?? 0);

/**
 * Derived models the exporter writes beside the fp32 graph (DESIGN §3 Variants). Each later stage
 * handles every variant too; `variants` in an event is absent when none is configured.
 */
export const VariantName = z.enum(['int8']);
export type VariantName = z.infer<typeof VariantName>;

/**
 * A configured variant that a stage held back (failed validation, over its tolerance, not loadable
 * for the benchmark): later stages skip it, and register reports it as not registered with the reason.
 */
export const SkippedVariant = z.object({ name: VariantName, stage: z.enum(['validate', 'parity', 'benchmark']), reason: z.string() });
export type SkippedVariant = z.infer<typeof SkippedVariant>;
const skippedVariants = z.array(SkippedVariant).optional();

export const CheckpointRef = z.object({
  uri: ObjectUri,
  sha256: Sha256,
  format: z.enum(['torch-zip', 'safetensors', 'onnx']),
  /** The object version the run was started from (a versioned bucket): what later stages read again. */
  versionId: z.string().min(1).optional(),
});
export type CheckpointRef = z.infer<typeof CheckpointRef>;

const TensorIO = z.object({ name: z.string(), dtype: z.string(), shape: z.array(z.union([z.number(), z.string()])) });

const OutputError = z.object({ maxAbs: z.number(), meanAbs: z.number() });

const ValidationCheck = z.object({ name: z.string(), passed: z.boolean(), detail: z.string() });

/** A two-sided confidence interval [low, high] (95 % unless the producer says otherwise). */
export const Interval = z.tuple([z.number(), z.number()]);

export const LatencyStats = z.object({
  batch: z.number().int().positive(),
  /** Timed runs behind these figures (after warm-up). */
  n: z.number().int().positive(),
  p50: z.number(),
  /** Distribution-free interval of the median (order statistics). */
  p50Interval: Interval,
  /** Only where `n` supports them (shared/gate/statistics.ts says the rule). */
  p90: z.number().optional(),
  p99: z.number().optional(),
  mean: z.number(),
  /** Samples per second at this batch size. */
  throughput: z.number(),
});
export type LatencyStats = z.infer<typeof LatencyStats>;

/**
 * What the trainer left beside the weights (DESIGN §3 Lineage): epoch and step, scalar metrics
 * (ModelCheckpoint's `best_model_score` under its `monitor` name), hyper-parameters flattened to
 * `a.b.c` keys, and the training MLflow run when known.
 */
export const Training = z.object({
  epoch: z.number().int().nonnegative().optional(),
  step: z.number().int().nonnegative().optional(),
  metrics: z.record(z.string(), z.number()).default({}),
  hyperParameters: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])).default({}),
  mlflowRunId: z.string().min(1).optional(),
});
export type Training = z.infer<typeof Training>;

export const CheckpointCreated = z.object({
  bucket: z.string().min(1),
  key: z.string().min(1),
  size: z.number().int().nonnegative(),
  etag: z.string(),
  versionId: z.string().optional(),
  runId: RunId,
  sha256: Sha256.optional(),
});

export const ModelExported = z.object({
  runId: RunId,
  checkpoint: CheckpointRef,
  onnx: OnnxArtifact,
  architecture: z.object({ name: z.string(), variant: z.string(), params: z.number().int() }),
  variants: z.array(z.object({ name: VariantName, onnx: OnnxArtifact })).optional(),
  training: Training.optional(),
  warnings: z.array(z.string()).default([]),
  durationMs: z.number(),
});

export const ModelValidated = z.object({
  runId: RunId,
  checkpoint: CheckpointRef,
  onnx: OnnxArtifact,
  training: Training.optional(),
  io: z.object({ inputs: z.array(TensorIO), outputs: z.array(TensorIO) }),
  batchSizesChecked: z.array(z.number().int()),
  checks: z.array(ValidationCheck),
  /** Each variant's checks: one that failed is skipped by later stages, not a failed run. */
  variants: z.array(z.object({ name: VariantName, onnx: OnnxArtifact, passed: z.boolean(), checks: z.array(ValidationCheck) })).optional(),
});

export const ModelParityChecked = z.object({
  runId: RunId,
  checkpoint: CheckpointRef,
  onnx: OnnxArtifact,
  training: Training.optional(),
  reference: z.enum(['golden', 'reference-impl']),
  samples: z.number().int().positive(),
  perOutput: z.record(z.string(), OutputError),
  tolerance: z.number(),
  passed: z.boolean(),
  /**
   * Each validated variant's outputs against the fp32 ONNX model's on the same samples, within its
   * own tolerance; one over it is skipped by the benchmark and not registered.
   */
  variants: z.array(z.object({ name: VariantName, onnx: OnnxArtifact, perOutput: z.record(z.string(), OutputError), tolerance: z.number(), passed: z.boolean() })).optional(),
  skippedVariants,
});
export type ParityResult = Pick<z.infer<typeof ModelParityChecked>, 'reference' | 'samples' | 'perOutput' | 'tolerance' | 'passed'>;

/**
 * The alias holder, timed in the same worker interleaved with the candidate (DESIGN §5): its own
 * figures, and the candidate/holder ratio of batch-1 p50 with its interval. `regression` is the
 * gate's rule: the interval's lower bound above 1 + threshold.
 */
export const Baseline = z.object({
  version: z.string(),
  sha256: Sha256,
  perBatch: z.array(LatencyStats).min(1),
  ratio: z.number(),
  ratioInterval: Interval,
  regression: z.boolean(),
  threshold: z.number(),
});
export type Baseline = z.infer<typeof Baseline>;

/** The variant's latency over the fp32 model's at one batch size, paired by round (below 1: faster). */
export const Speedup = z.object({ batch: z.number().int().positive(), ratio: z.number(), ratioInterval: Interval });
export type Speedup = z.infer<typeof Speedup>;

export const BenchmarkedVariant = z.object({
  name: VariantName,
  onnx: OnnxArtifact,
  perBatch: z.array(LatencyStats).min(1),
  speedup: z.array(Speedup).min(1),
  /** Against the version holding the alias of the variant's own name (`<modelName>-<variant>`), as fp32's baseline. */
  baseline: Baseline.optional(),
  perOutput: z.record(z.string(), OutputError),
  tolerance: z.number(),
});
export type BenchmarkedVariant = z.infer<typeof BenchmarkedVariant>;

export const ModelBenchmarked = z.object({
  runId: RunId,
  checkpoint: CheckpointRef,
  onnx: OnnxArtifact,
  training: Training.optional(),
  provider: z.string(),
  threads: z.number().int().positive(),
  sessionCreateMs: z.number(),
  /** Wall time of the warm-up and timed runs of every batch size: what the benchmark's settings decide, the rest of a run is overhead. */
  measurementMs: z.number().optional(),
  perBatch: z.array(LatencyStats).min(1),
  baseline: Baseline.optional(),
  /** The parity figures, carried to register for the registry's tags and metrics. */
  parity: ModelParityChecked.pick({ reference: true, samples: true, perOutput: true, tolerance: true, passed: true }),
  warnings: z.array(z.string()).default([]),
  /** The variants that passed parity, timed interleaved with the model, and their error against it (for register's accuracy check). */
  variants: z.array(BenchmarkedVariant).optional(),
  skippedVariants,
});

export const GatePolicy = z.enum(['block', 'warn']);
export type GatePolicy = z.infer<typeof GatePolicy>;

/** One check of the gate (DESIGN §3 The gate): `value` against `limit` where both are known. */
export const GateCheck = z.object({
  name: z.enum(['latency', 'metric', 'accuracy']),
  passed: z.boolean(),
  value: z.number().nullable(),
  limit: z.number().nullable(),
  policy: GatePolicy,
  /** One line a person reads: what was compared with what, or why nothing was. */
  detail: z.string(),
});
export type GateCheck = z.infer<typeof GateCheck>;

/** `passed`: no check with policy `block` failed (the alias may move). */
export const GateVerdict = z.object({ passed: z.boolean(), checks: z.array(GateCheck) });
export type GateVerdict = z.infer<typeof GateVerdict>;

const RegistryRef = z.object({
  name: z.string(),
  version: z.string(),
  runId: z.string(),
  modelUri: z.string(),
  /** False when this model (by sha256) was already registered and the existing version is reported. */
  created: z.boolean(),
});
/** The configured alias: whether it now points at this version, and what held it before. */
const AliasOutcome = z.object({ name: z.string(), moved: z.boolean(), previous: z.string().optional() });

export const RegisteredVariant = z.object({
  name: VariantName,
  registered: z.boolean(),
  /** Why it was not registered: the stage that held it back and its figures. */
  reason: z.string().optional(),
  registry: RegistryRef.optional(),
  gate: GateVerdict.optional(),
  alias: AliasOutcome.optional(),
});
export type RegisteredVariant = z.infer<typeof RegisteredVariant>;

export const ModelRegistered = z.object({
  runId: RunId,
  registry: RegistryRef,
  gate: GateVerdict,
  alias: AliasOutcome,
  onnx: OnnxArtifact,
  training: Training.optional(),
  /** Each configured variant: registered under `<name>-<variant>` with its gate and alias, or why not. */
  variants: z.array(RegisteredVariant).optional(),
});

export const PromotionReason = z.enum(['gate passed', 'manual', 'rollback']);
export type PromotionReason = z.infer<typeof PromotionReason>;

/** An alias moved (by the gate, or by hand with `heimdall promote` / `rollback`). */
export const ModelPromoted = z.object({
  /** The pipeline run that produced the version (its `pipeline_run_id` tag). */
  runId: z.string().min(1),
  name: z.string(),
  version: z.string(),
  alias: z.string(),
  previous: z.string().optional(),
  reason: PromotionReason,
  /** Who moved it: `heimdall/register`, or the user running the CLI. */
  actor: z.string(),
});

export const PipelineFailed = z.object({
  runId: z.string(),
  stage: z.string(),
  error: z.object({ code: z.string(), message: z.string() }),
  attempt: z.number().int().positive(),
  retriable: z.boolean(),
});

export const EventSchemas = {
  'heimdall.checkpoint.created': CheckpointCreated,
  'heimdall.model.exported': ModelExported,
  'heimdall.model.validated': ModelValidated,
  'heimdall.model.parity-checked': ModelParityChecked,
  'heimdall.model.benchmarked': ModelBenchmarked,
  'heimdall.model.registered': ModelRegistered,
  'heimdall.model.promoted': ModelPromoted,
  'heimdall.pipeline.failed': PipelineFailed,
} as const;

export type EventType = keyof typeof EventSchemas;
export type EventData<T extends EventType> = z.infer<(typeof EventSchemas)[T]>;
export const EVENT_TYPES = Object.keys(EventSchemas) as EventType[];
