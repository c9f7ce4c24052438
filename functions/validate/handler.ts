import { ErrorCodes, HeimdallError } from '../../shared/errors/index.ts';
import { createEvent, type OnnxArtifact } from '../../shared/events/index.ts';
import { checkUncertaintyRange, INPUT_NAME, INPUT_SHAPE, OUTPUT_NAMES, OUTPUT_WIDTH } from '../../shared/models/localization-net/architecture.ts';
import { configNumber } from '../../shared/models/localization-net/infer.ts';
import { BATCH_DIM } from '../../shared/models/localization-net/graph.ts';
import { readModelSummary, type ModelSummary, type ValueSummary } from '../../shared/onnx/reader.ts';
import { externalDataName } from '../../shared/onnx/model.ts';
import { externalDataProblems, structuralProblems } from '../../shared/onnx/structure.ts';
import { source, type StageContext, type StageHandler } from '../../shared/pipeline/stage.ts';
import { openModel, type ModelOutputs } from '../../shared/runtime/model-host.ts';
import { sampleInput } from '../../shared/runtime/sample-input.ts';
import { fetchModel } from '../../shared/storage/object-store.ts';
import { formatBytes } from '../../shared/cli/format.ts';
import { basename } from 'node:path';

/** DESIGN §5: the batch sizes every model must serve. */
export const VALIDATION_BATCHES = [1, 2, 8, 32] as const;
const FLOAT = 1;

interface Check {
  name: string;
  passed: boolean;
  detail: string;
}

/**
 * model.exported -> model.validated: our own structural checks (onnxruntime accepts unsorted graphs
 * and reassigned names), the I/O contract, then real inference at each batch size with finite
 * outputs and uncertainties inside their clamp range. Any failed check: INVALID_MODEL. Each variant
 * gets the same checks; one that fails is no failed run: its entry says which checks failed, and
 * later stages skip it.
 */
export const validateHandler: StageHandler<'heimdall.model.exported', 'heimdall.model.validated'> = async (event, ctx) => {
  const { runId, onnx } = event.data;
  const { summary, checks, range } = await checkModel(onnx, ctx);
  const failed = checks.filter((c) => !c.passed);
  if (failed.length > 0) throw new HeimdallError(ErrorCodes.INVALID_MODEL, failed.map((c) => `${c.name}: ${c.detail}`).join(' | '));
  const variants = [];
  for (const variant of event.data.variants ?? []) {
    // The clamp is the fp32 model's: a variant must keep the contract its metadata may restate.
    const { checks: variantChecks } = await checkVariant(variant.name, variant.onnx, range, ctx);
    variants.push({ name: variant.name, onnx: variant.onnx, passed: variantChecks.every((c) => c.passed), checks: variantChecks });
  }
  const io = (values: readonly ValueSummary[]) => values.map((v) => ({ name: v.name, dtype: v.elemType === FLOAT ? 'float32' : `onnx-type-${v.elemType}`, shape: [...v.shape] }));
  return createEvent('heimdall.model.validated', {
    stage: 'validate',
    source: source('validate'),
    data: {
      runId,
      checkpoint: event.data.checkpoint,
      onnx,
      ...(event.data.training ? { training: event.data.training } : {}),
      io: { inputs: io(summary.graph.inputs), outputs: io(summary.graph.outputs) },
      batchSizesChecked: [...VALIDATION_BATCHES],
      checks,
      ...(event.data.variants ? { variants } : {}),
    },
  });
};

type UncertaintyRange = { min: number; max: number };

/**
 * The checks of one model: structure, I/O contract, inference at every batch size. The clamp range
 * is the model's own metadata's unless given. Content faults that stop the checks (a file we cannot
 * parse, one onnxruntime refuses) are INVALID_MODEL, thrown.
 */
async function checkModel(onnx: OnnxArtifact, ctx: StageContext, options: { range?: UncertaintyRange; label?: string } = {}): Promise<{ summary: ModelSummary; checks: Check[]; range: UncertaintyRange }> {
  const say = (message: string) => ctx.progress(options.label ? `${options.label}: ${message}` : message);
  const model = await fetchModel(ctx.store, onnx.uri);
  const checks: Check[] = [];
  const check = (name: string, problems: string[], passedDetail: string) => checks.push({ name, passed: problems.length === 0, detail: problems.length ? problems.join('; ') : passedDetail });
  try {
    say('reading graph structure');
    const summary = await readModelSummary(model.path);
    check('structure', structuralProblems(summary), `${summary.graph.nodes.length} nodes, topologically sorted, single assignment, IR ${summary.irVersion} / opset ${summary.opsets.get('')}`);
    check('io-contract', ioProblems(summary.graph.inputs, summary.graph.outputs), `${INPUT_NAME} -> ${OUTPUT_NAMES.join(', ')}`);
    const range = options.range ?? uncertaintyRange(summary.metadata);
    const data = model.externalData && { name: basename(model.externalData.path), bytes: model.externalData.bytes, ...(model.externalData.sha256 ? { sha256: model.externalData.sha256 } : {}) };
    const dataProblems = externalDataProblems(summary, externalDataName(basename(model.path)), data);
    check('external-data', dataProblems, data ? `weights in ${data.name} (${formatBytes(data.bytes)}), within it, its sha256 named by the model` : 'every weight inline');
    // onnxruntime would open whatever file the model names: not one that is not the model's own.
    if (dataProblems.length > 0) return { summary, checks, range };

    say('loading in onnxruntime');
    // One session for every batch size, on the provider the model will serve on (as parity and the
    // benchmark open it: a run that shares its sessions opens the model once for all three).
    const session = await openModel(model.path, { provider: ctx.config.benchmark.provider, threads: ctx.config.benchmark.threads }, { signal: ctx.signal, sha256: onnx.sha256 });
    try {
      for (const batch of VALIDATION_BATCHES) {
        say(`inference at batch ${batch}`);
        // A model onnxruntime loads but cannot run (a fixed batch size, a wrong input) fails this check: INVALID_MODEL.
        const outputs = await session.run({ [INPUT_NAME]: { data: sampleInput(batch, batch), dims: [batch, ...INPUT_SHAPE] } }).catch((error: unknown) => {
          if (ctx.signal.aborted || (error instanceof HeimdallError && error.code === ErrorCodes.IO_ERROR)) throw error;
          return error instanceof Error ? error : new Error(String(error));
        });
        const problems = outputs instanceof Error ? [`onnxruntime cannot run it: ${outputs.message.split('\n')[0]}`] : outputProblems(outputs, batch, range);
        check(`batch-${batch}`, problems, `shapes [${batch}, ${OUTPUT_WIDTH}], finite, uncertainties in [${range.min}, ${range.max}]`);
      }
    } finally {
      await session.close();
    }
    return { summary, checks, range };
  } finally {
    await model.release();
  }
}

/** A variant's checks; one whose file cannot be parsed or loaded fails a `load` check instead of the run. */
async function checkVariant(name: string, onnx: OnnxArtifact, range: UncertaintyRange, ctx: StageContext): Promise<{ checks: Check[] }> {
  try {
    return await checkModel(onnx, ctx, { range, label: name });
  } catch (error) {
    // INVALID_MODEL is the variant's own bytes; anything else (the machine, a stop) is the run's.
    if (!(error instanceof HeimdallError) || error.code !== ErrorCodes.INVALID_MODEL) throw error;
    return { checks: [{ name: 'load', passed: false, detail: error.message.split('\n')[0]! }] };
  }
}

function ioProblems(inputs: readonly ValueSummary[], outputs: readonly ValueSummary[]): string[] {
  const problems: string[] = [];
  const expect = (kind: string, actual: readonly ValueSummary[], expected: { name: string; shape: (string | number)[] }[]) => {
    if (actual.length !== expected.length) problems.push(`${actual.length} ${kind}s, expected ${expected.length}`);
    expected.forEach((e, i) => {
      const a = actual[i];
      if (!a) return;
      if (a.name !== e.name) problems.push(`${kind} ${i} is ${a.name}, expected ${e.name}`);
      if (a.elemType !== FLOAT) problems.push(`${kind} ${a.name} has element type ${a.elemType}, expected float32`);
      if (JSON.stringify(a.shape) !== JSON.stringify(e.shape)) problems.push(`${kind} ${a.name} has shape [${a.shape.join(', ')}], expected [${e.shape.join(', ')}]`);
    });
  };
  expect('input', inputs, [{ name: INPUT_NAME, shape: [BATCH_DIM, ...INPUT_SHAPE] }]);
  expect('output', outputs, OUTPUT_NAMES.map((name) => ({ name, shape: [BATCH_DIM, OUTPUT_WIDTH] })));
  return problems;
}

/** The clamp range the model's metadata states, read as strictly as a checkpoint's config (INVALID_MODEL when malformed). */
function uncertaintyRange(metadata: Readonly<Record<string, string>>): UncertaintyRange {
  try {
    const min = configNumber(metadata, 'uncertainty_min');
    const max = configNumber(metadata, 'uncertainty_max');
    // A model from elsewhere may not say; softplus output is positive whatever the clamp.
    if (min === undefined || max === undefined) return { min: min ?? 0, max: max ?? Number.POSITIVE_INFINITY };
    checkUncertaintyRange(min, max);
    return { min, max };
  } catch (error) {
    throw error instanceof HeimdallError ? new HeimdallError(ErrorCodes.INVALID_MODEL, `model metadata: ${error.message}`) : error;
  }
}

function outputProblems(outputs: ModelOutputs, batch: number, range: UncertaintyRange): string[] {
  const problems: string[] = [];
  for (const name of OUTPUT_NAMES) {
    const tensor = outputs[name];
    if (!tensor) {
      problems.push(`no ${name} output`);
      continue;
    }
    if (JSON.stringify(tensor.dims) !== JSON.stringify([batch, OUTPUT_WIDTH])) problems.push(`${name} has shape [${tensor.dims.join(', ')}]`);
    if (!(tensor.data instanceof Float32Array)) {
      problems.push(`${name} is ${tensor.type}, not float32`);
      continue;
    }
    const values = tensor.data;
    const nonFinite = values.filter((v) => !Number.isFinite(v)).length;
    if (nonFinite > 0) problems.push(`${nonFinite} non-finite values in ${name}`);
    if (name === 'uncertainties') {
      // float32 rounding of the bounds themselves.
      const outside = values.filter((v) => v < Math.fround(range.min) || v > Math.fround(range.max)).length;
      if (outside > 0) problems.push(`${outside} uncertainties outside [${range.min}, ${range.max}]`);
    }
  }
  return problems;
}
