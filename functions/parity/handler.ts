import { openCheckpoint, type Checkpoint, type LazyTensor } from '../../shared/checkpoint/index.ts';
import { ErrorCodes, HeimdallError, isRetriable } from '../../shared/errors/index.ts';
import { createEvent, type EventData, type OnnxArtifact, type ParityResult, type SkippedVariant } from '../../shared/events/index.ts';
import { INPUT_NAME, INPUT_SHAPE, OUTPUT_NAMES } from '../../shared/models/localization-net/architecture.ts';
import { inferArchitecture } from '../../shared/models/localization-net/infer.ts';
import { referencePass } from '../../shared/models/localization-net/reference-pass.ts';
import { source, type StageContext, type StageHandler } from '../../shared/pipeline/stage.ts';
import { openModel, type HostedModel, type ModelOutputs } from '../../shared/runtime/model-host.ts';
import { sampleInput } from '../../shared/runtime/sample-input.ts';
import { fetchModel, locateUri, PARITY_SIDECAR_SUFFIX } from '../../shared/storage/object-store.ts';

/** Where expected outputs come from, and the inputs they belong to. */
interface Expected {
  readonly reference: ParityResult['reference'];
  readonly inputs: Float32Array;
  readonly samples: number;
  readonly outputs: Readonly<Record<(typeof OUTPUT_NAMES)[number], Float32Array>>;
}

/**
 * model.validated -> model.parity-checked: the ONNX model's outputs against golden samples computed
 * by PyTorch at training time (a `parity` entry in the checkpoint, or a `<checkpoint>.parity.safetensors`
 * sidecar), else against our TypeScript reference forward pass on the checkpoint's weights.
 * Max and mean absolute error per output; above the tolerance: PARITY_EXCEEDED. Then each variant
 * against the fp32 model's outputs on the same samples (checkVariants).
 */
export const parityHandler: StageHandler<'heimdall.model.validated', 'heimdall.model.parity-checked'> = async (event, ctx) => {
  const { runId, onnx, checkpoint: checkpointRef } = event.data;
  // The checkpoint version the run was exported from (a versioned bucket may hold newer ones by now).
  const location: ObjectLocation = { ...locateUri(ctx.store, checkpointRef.uri), ...(checkpointRef.versionId ? { versionId: checkpointRef.versionId } : {}) };
  const expected = checkpointRef.format === 'onnx' ? await uploadedModelSamples(location, ctx) : await checkpointSamples(location, ctx);
  ctx.progress(`running the ONNX model on ${expected.samples} ${expected.reference} samples`);
  const actual = await runModel(onnx, expected, ctx);

  const tolerance = ctx.config.parity.tolerance;
  const perOutput = errorsPerOutput(actual, expected.outputs);
  const passed = Object.values(perOutput).every((e) => e.maxAbs <= tolerance);
  if (!passed) throw new HeimdallError(ErrorCodes.PARITY_EXCEEDED, `${figures(perOutput)} against ${expected.reference} samples exceeds the tolerance ${tolerance}`);
  const variants = event.data.variants ? await checkVariants(event.data.variants, expected, actual, ctx) : undefined;
  return createEvent('heimdall.model.parity-checked', {
    stage: 'parity',
    source: source('parity'),
    data: {
      runId,
      checkpoint: checkpointRef,
      onnx,
      ...(event.data.training ? { training: event.data.training } : {}),
      reference: expected.reference,
      samples: expected.samples,
      perOutput,
      tolerance,
      passed,
      ...(variants ? { variants: variants.checked, ...(variants.skipped.length > 0 ? { skippedVariants: variants.skipped } : {}) } : {}),
    },
  });
};

type Outputs = Record<(typeof OUTPUT_NAMES)[number], Float32Array>;
type ValidatedVariant = NonNullable<EventData<'heimdall.model.validated'>['variants']>[number];
type CheckedVariant = NonNullable<EventData<'heimdall.model.parity-checked'>['variants']>[number];

/** The model's outputs on the expected samples' inputs. */
async function runModel(onnx: OnnxArtifact, expected: Expected, ctx: StageContext): Promise<Outputs> {
  const model = await fetchModel(ctx.store, onnx.uri);
  try {
    // On the provider the model will serve on (a GPU pod runs parity on CUDA): its numerics are what must match.
    const session = await openModel(model.path, { provider: ctx.config.benchmark.provider, threads: ctx.config.benchmark.threads }, { signal: ctx.signal, sha256: onnx.sha256 });
    for (const warning of session.warnings) ctx.logger.warn({ model: onnx.uri }, warning);
    try {
      return await runInBatches(session, expected.inputs, expected.samples);
    } finally {
      await session.close();
    }
  } finally {
    await model.release();
  }
}

/**
 * Each variant that passed validation, run on the same inputs as the fp32 model, against the fp32
 * ONNX model's outputs (what it is derived from, and what a deployment would swap it for) within its
 * own tolerance. One over it, or one that cannot run here, is held back for the later stages with
 * its figures; that is no failed run.
 */
async function checkVariants(validated: readonly ValidatedVariant[], expected: Expected, fp32: Outputs, ctx: StageContext): Promise<{ checked: CheckedVariant[]; skipped: SkippedVariant[] }> {
  const checked: CheckedVariant[] = [];
  const skipped: SkippedVariant[] = [];
  for (const variant of validated) {
    if (!variant.passed) {
      const failed = variant.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.detail}`);
      skipped.push({ name: variant.name, stage: 'validate', reason: `failed validation (${failed.join('; ')})` });
      continue;
    }
    ctx.progress(`running the ${variant.name} variant on the same ${expected.samples} samples`);
    let outputs: Outputs;
    try {
      outputs = await runModel(variant.onnx, expected, ctx);
    } catch (error) {
      // The variant's own fault (it does not load, its file is gone) holds it back; the machine's is retried as usual.
      if (!(error instanceof HeimdallError) || isRetriable(error.code)) throw error;
      skipped.push({ name: variant.name, stage: 'parity', reason: error.message });
      continue;
    }
    const tolerance = ctx.config.variantTolerance[variant.name];
    const perOutput = errorsPerOutput(outputs, fp32);
    // NaN or Inf outputs have no error figure an event can carry (JSON has no Infinity).
    if (!Object.values(perOutput).every((e) => Number.isFinite(e.maxAbs) && Number.isFinite(e.meanAbs))) {
      skipped.push({ name: variant.name, stage: 'parity', reason: `its outputs on the ${expected.samples} samples are not all finite` });
      continue;
    }
    const passed = Object.values(perOutput).every((e) => e.maxAbs <= tolerance);
    checked.push({ name: variant.name, onnx: variant.onnx, perOutput, tolerance, passed });
    if (!passed) skipped.push({ name: variant.name, stage: 'parity', reason: `${figures(perOutput)} against the fp32 model on ${expected.samples} samples exceeds its tolerance ${tolerance}` });
  }
  return { checked, skipped };
}

const errorsPerOutput = (actual: Outputs, expected: Expected['outputs']) => Object.fromEntries(OUTPUT_NAMES.map((name) => [name, absoluteError(actual[name], expected[name])]));

const figures = (perOutput: Readonly<Record<string, { maxAbs: number }>>) =>
  Object.entries(perOutput).map(([name, e]) => `${name} max |diff| ${e.maxAbs.toExponential(2)}`).join(', ');

async function checkpointSamples(location: ObjectLocation, ctx: StageContext): Promise<Expected> {
  const file = await ctx.store.fetchFile(location.bucket, location.key, location.versionId ? { versionId: location.versionId } : undefined);
  try {
    const checkpoint = await openCheckpoint(file.path);
    try {
      if (checkpoint.parity) {
        ctx.progress('using the golden samples inside the checkpoint');
        return await fromGolden(checkpoint.parity, 'parity entry');
      }
      return (await sidecarSamples(location, ctx)) ?? (await referenceSamples(file.path, checkpoint, ctx));
    } finally {
      await checkpoint.close();
    }
  } finally {
    await file.release();
  }
}

/** An uploaded ONNX model has no weights we can run our reference on: it needs golden samples beside it. */
async function uploadedModelSamples(location: ObjectLocation, ctx: StageContext): Promise<Expected> {
  const golden = await sidecarSamples(location, ctx);
  if (!golden) throw new HeimdallError(ErrorCodes.PARITY_UNAVAILABLE, `${location.key} is an ONNX upload without golden samples: put ${location.key}${PARITY_SIDECAR_SUFFIX} beside it`);
  return golden;
}

/** Where the checkpoint is; its golden-samples sidecar is another object, read as it is now. */
type ObjectLocation = { bucket: string; key: string; versionId?: string };

async function sidecarSamples(location: ObjectLocation, ctx: StageContext): Promise<Expected | undefined> {
  const sidecarKey = `${location.key}${PARITY_SIDECAR_SUFFIX}`;
  if (!(await ctx.store.stat(location.bucket, sidecarKey))) return undefined;
  ctx.progress(`using the golden samples in ${sidecarKey}`);
  const sidecar = await ctx.store.fetchFile(location.bucket, sidecarKey);
  try {
    const golden = await openCheckpoint(sidecar.path);
    try {
      return await fromGolden(golden.tensors, sidecarKey);
    } finally {
      await golden.close();
    }
  } finally {
    await sidecar.release();
  }
}

async function fromGolden(tensors: ReadonlyMap<string, LazyTensor>, where: string): Promise<Expected> {
  const get = (name: string) => {
    const tensor = tensors.get(name);
    if (!tensor) throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `golden samples in ${where} lack ${name}`);
    return tensor;
  };
  const inputs = get('inputs');
  const samples = inputs.shape[0] ?? 0;
  if (samples < 1 || JSON.stringify(inputs.shape.slice(1)) !== JSON.stringify(INPUT_SHAPE)) {
    throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `golden inputs in ${where} have shape [${inputs.shape.join(', ')}], expected [N, ${INPUT_SHAPE.join(', ')}]`);
  }
  const outputs = {} as Record<(typeof OUTPUT_NAMES)[number], Float32Array>;
  for (const name of OUTPUT_NAMES) {
    const tensor = get(name);
    if (JSON.stringify(tensor.shape) !== JSON.stringify([samples, 2])) {
      throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `golden ${name} in ${where} has shape [${tensor.shape.join(', ')}], expected [${samples}, 2]`);
    }
    outputs[name] = await tensor.readFloat32();
  }
  return { reference: 'golden', inputs: await inputs.readFloat32(), samples, outputs };
}

/**
 * Our reference forward pass on the checkpoint's weights, on worker threads (one per core). It runs
 * before the ONNX model does, and the model's session (opened after it, or kept from validate where
 * the run shares its sessions) has no threads spinning meanwhile: the two never compete for the cores.
 */
async function referenceSamples(path: string, checkpoint: Checkpoint, ctx: StageContext): Promise<Expected> {
  const samples = ctx.config.parity.samples;
  const spec = inferArchitecture(checkpoint.tensors, checkpoint.config);
  const inputs = sampleInput(samples, 7);
  ctx.progress(`reference forward pass on ${samples} samples (${spec.variant})`);
  const { positions, uncertainties } = await referencePass(path, spec, inputs, samples, {
    signal: ctx.signal,
    onProgress: (fraction) => ctx.progress(`reference forward pass: ${Math.floor(fraction * 100)}% of ${samples} samples (${spec.variant})`),
  });
  return { reference: 'reference-impl', inputs, samples, outputs: { positions, uncertainties } };
}

/** The largest batch parity runs at once: a sidecar's sample count never decides how much memory inference takes. */
export const PARITY_BATCH = 32;

/**
 * The model's outputs on `samples` inputs, PARITY_BATCH at a time. A model validate ran at every
 * batch size that fails here (an output missing or of another size, onnxruntime refusing the
 * inputs) is at fault itself: INVALID_MODEL, as validate would have said.
 */
async function runInBatches(session: HostedModel, inputs: Float32Array, samples: number): Promise<Record<(typeof OUTPUT_NAMES)[number], Float32Array>> {
  const perSample = inputs.length / samples;
  const outputs = Object.fromEntries(OUTPUT_NAMES.map((name) => [name, new Float32Array(samples * 2)])) as Record<(typeof OUTPUT_NAMES)[number], Float32Array>;
  for (let start = 0; start < samples; start += PARITY_BATCH) {
    const batch = Math.min(PARITY_BATCH, samples - start);
    let result: ModelOutputs;
    try {
      // A copy: a view would carry the whole input buffer across to the model's process, batch after batch.
      result = await session.run({ [INPUT_NAME]: { data: inputs.slice(start * perSample, (start + batch) * perSample), dims: [batch, ...INPUT_SHAPE] } });
    } catch (error) {
      // The machine (the process died) or a stop: not the model's fault.
      if (error instanceof HeimdallError) throw error;
      throw new HeimdallError(ErrorCodes.INVALID_MODEL, `onnxruntime cannot run the model on samples ${start}-${start + batch - 1}: ${(error instanceof Error ? error.message : String(error)).split('\n')[0]}`, { cause: error });
    }
    for (const name of OUTPUT_NAMES) {
      const data = result[name]?.data;
      if (!(data instanceof Float32Array) || data.length !== batch * 2) throw new HeimdallError(ErrorCodes.INVALID_MODEL, `the model's ${name} output is not [${batch}, 2] float32`);
      outputs[name].set(data, start * 2);
    }
  }
  return outputs;
}

function absoluteError(actual: Float32Array, expected: Float32Array): { maxAbs: number; meanAbs: number } {
  let max = 0;
  let sum = 0;
  for (let i = 0; i < expected.length; i++) {
    const diff = Math.abs(actual[i]! - expected[i]!);
    // NaN anywhere is an unbounded error, never a pass.
    max = Number.isNaN(diff) ? Number.POSITIVE_INFINITY : Math.max(max, diff);
    sum += diff;
  }
  return { maxAbs: max, meanAbs: sum / expected.length };
}
