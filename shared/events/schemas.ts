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
  sha256: Sha256,
  bytes: z.number().int().nonnegative(),
  opset: z.number().int(),
  irVersion: z.number().int(),
});
export type OnnxArtifact = z.infer<typeof OnnxArtifact>;

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

export const LatencyStats = z.object({
  batch: z.number().int().positive(),
  p50: z.number(),
  p90: z.number(),
  p99: z.number(),
  mean: z.number(),
  /** Samples per second at this batch size. */
  throughput: z.number(),
});
export type LatencyStats = z.infer<typeof LatencyStats>;

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
  warnings: z.array(z.string()).default([]),
  durationMs: z.number(),
});

export const ModelValidated = z.object({
  runId: RunId,
  checkpoint: CheckpointRef,
  onnx: OnnxArtifact,
  io: z.object({ inputs: z.array(TensorIO), outputs: z.array(TensorIO) }),
  batchSizesChecked: z.array(z.number().int()),
  checks: z.array(z.object({ name: z.string(), passed: z.boolean(), detail: z.string() })),
});

export const ModelParityChecked = z.object({
  runId: RunId,
  checkpoint: CheckpointRef,
  onnx: OnnxArtifact,
  reference: z.enum(['golden', 'reference-impl']),
  samples: z.number().int().positive(),
  perOutput: z.record(z.string(), OutputError),
  tolerance: z.number(),
  passed: z.boolean(),
});
export type ParityResult = Pick<z.infer<typeof ModelParityChecked>, 'reference' | 'samples' | 'perOutput' | 'tolerance' | 'passed'>;

export const Baseline = z.object({
  version: z.string(),
  p50: z.number(),
  ratio: z.number(),
  regression: z.boolean(),
  threshold: z.number(),
});

export const ModelBenchmarked = z.object({
  runId: RunId,
  checkpoint: CheckpointRef,
  onnx: OnnxArtifact,
  provider: z.string(),
  threads: z.number().int().positive(),
  sessionCreateMs: z.number(),
  perBatch: z.array(LatencyStats).min(1),
  baseline: Baseline.optional(),
  /** The parity figures, carried to register for the registry's tags and metrics. */
  parity: ModelParityChecked.pick({ reference: true, samples: true, perOutput: true, tolerance: true, passed: true }),
  warnings: z.array(z.string()).default([]),
});

export const ModelRegistered = z.object({
  runId: RunId,
  registry: z.object({
    name: z.string(),
    version: z.string(),
    alias: z.string(),
    runId: z.string(),
    modelUri: z.string(),
    /** False when this model (by sha256) was already registered and the existing version is reported. */
    created: z.boolean(),
  }),
  onnx: OnnxArtifact,
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
  'heimdall.pipeline.failed': PipelineFailed,
} as const;

export type EventType = keyof typeof EventSchemas;
export type EventData<T extends EventType> = z.infer<(typeof EventSchemas)[T]>;
export const EVENT_TYPES = Object.keys(EventSchemas) as EventType[];
