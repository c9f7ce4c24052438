import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { HeimdallError, isRetriable } from '../../shared/errors/index.ts';
import { createEvent, modelBytes, type CloudEvent, type EventData } from '../../shared/events/index.ts';
import type { Baseline, BenchmarkedVariant, GateVerdict, LatencyStats, RegisteredVariant, Training } from '../../shared/events/schemas.ts';
import { decideGate } from '../../shared/gate/checks.ts';
import { GATE_ACTOR, promote } from '../../shared/gate/promotion.ts';
import { variantModelName } from '../../shared/gate/variants.ts';
import { registryFields } from '../../shared/lineage/registry-fields.ts';
import { readModelSummary } from '../../shared/onnx/reader.ts';
import { source, type StageContext, type StageHandler } from '../../shared/pipeline/stage.ts';
import { GATE_TAG, ONNX_URI_TAG, PIPELINE_RUN_TAG, type AliasChange, type ModelRegistry, type ModelVersion } from '../../shared/registry/model-registry.ts';
import { gateVerdictOf } from '../../shared/registry/versions.ts';
import { writeAtomically } from '../../shared/storage/fs.ts';
import { fetchModel, MODELS_BUCKET, reportKey } from '../../shared/storage/object-store.ts';

type Benchmarked = CloudEvent<'heimdall.model.benchmarked'>;
type Registered = EventData<'heimdall.model.registered'>;

/**
 * model.benchmarked -> model.registered: always registers the model (idempotent by its sha256),
 * with params, metrics and tags from every stage and its training lineage, and stores the run's
 * report; then the gate compares it with the alias holder and, when no blocking check fails,
 * moves the alias (the runners announce the move as `model.promoted`: shared/pipeline/follow-ups.ts).
 * Then each benchmarked variant the same way under its own name (`<modelName>-<variant>`), with its
 * own alias holder and an accuracy check against the fp32 model; a variant an earlier stage held
 * back is reported as not registered, with the reason.
 */
export const registerHandler: StageHandler<'heimdall.model.benchmarked', 'heimdall.model.registered'> = async (event, ctx) => {
  const { runId, onnx, baseline, training } = event.data;
  const fp32 = await registerAndGate(ctx, { name: ctx.config.modelName, sha256: onnx.sha256, ...(baseline ? { baseline } : {}) }, training, (gate) => registerModel(event, gate, ctx));
  const variants: RegisteredVariant[] = [];
  for (const variant of event.data.variants ?? []) {
    const name = variantModelName(ctx.config.modelName, variant.name);
    const accuracy = { maxAbs: Math.max(...Object.values(variant.perOutput).map((e) => e.maxAbs)), tolerance: variant.tolerance };
    const target = { name, sha256: variant.onnx.sha256, ...(variant.baseline ? { baseline: variant.baseline } : {}), accuracy };
    try {
      const outcome = await registerAndGate(ctx, target, training, (gate) => registerVariant(event, variant, fp32.version, gate, ctx));
      variants.push({ name: variant.name, registered: true, ...outcomeData(ctx, name, outcome) });
    } catch (error) {
      // The fp32 model is registered (its alias may have moved): a variant the registry refuses, or
      // whose file is gone, is reported as not registered; the registry unreachable is retried, and the
      // redelivery finds every step done so far.
      if (!(error instanceof HeimdallError) || isRetriable(error.code)) throw error;
      variants.push({ name: variant.name, registered: false, reason: `not registered as ${name}: ${error.code}: ${error.message}` });
    }
  }
  for (const skipped of event.data.skippedVariants ?? []) {
    variants.push({ name: skipped.name, registered: false, reason: `held back at ${skipped.stage}: ${skipped.reason}` });
  }
  return createEvent('heimdall.model.registered', {
    stage: 'register',
    source: source('register'),
    data: {
      runId,
      ...outcomeData(ctx, ctx.config.modelName, fp32),
      onnx,
      ...(training ? { training } : {}),
      ...(event.data.variants || event.data.skippedVariants ? { variants } : {}),
    },
  });
};

/** A model to register under `name`, with what its gate compares. */
interface Target {
  readonly name: string;
  readonly sha256: string;
  readonly baseline?: Baseline;
  readonly accuracy?: { readonly maxAbs: number; readonly tolerance: number };
}

interface Outcome {
  readonly version: ModelVersion;
  readonly created: boolean;
  readonly gate: GateVerdict;
  readonly move: { readonly moved: boolean; readonly previous?: string | undefined };
}

/**
 * Registers one model (unless its sha256 is already a version of `name`) and runs its gate against
 * the holder of the alias under that name; moves the alias when the gate passes.
 */
async function registerAndGate(ctx: StageContext, target: Target, training: Training | undefined, register: (gate: GateVerdict) => Promise<{ version: ModelVersion; created: boolean }>): Promise<Outcome> {
  const { name, sha256 } = target;
  const { alias } = ctx.config;
  const existing = await ctx.registry.findVersionBySha256(name, sha256);
  const holder = await ctx.registry.getVersionByAlias(name, alias);
  const earlierMove = existing ? await gateMoveOf(ctx.registry, name, alias, existing.version) : undefined;
  const decide = () => decideGate({ config: ctx.config.gate, holder, ...(target.baseline ? { baseline: target.baseline } : {}), ...(training ? { training } : {}), ...(target.accuracy ? { accuracy: target.accuracy } : {}) });
  // The gate moves an alias once per version: a redelivery, or the same checkpoint run again, reports
  // that move and never repeats it (which would undo a rollback made since). To put an old version
  // back, promote it by hand.
  if (existing && earlierMove) {
    return { version: existing, created: false, gate: gateVerdictOf(existing.tags[GATE_TAG]) ?? decide(), move: { moved: holder?.version === existing.version, previous: earlierMove.previous } };
  }
  const gate = decide();
  const { version, created } = existing ? { version: existing, created: false } : await register(gate);
  // Held back, or already holding the alias by a move by hand: nothing for the gate to move.
  if (!gate.passed || holder?.version === version.version) return { version, created, gate, move: { moved: false, previous: holder?.version } };
  ctx.progress(`gate passed: moving ${name}@${alias} to version ${version.version}`);
  // Compare-and-set: when another run moved the alias since this gate read it, the move is refused
  // (retriable), and the redelivery decides again against the new holder.
  const { previous } = await promote(ctx.registry, { name, alias, version: version.version, reason: 'gate passed', actor: GATE_ACTOR, expectedHolder: holder?.version ?? null });
  return { version, created, gate, move: { moved: true, previous } };
}

function outcomeData(ctx: StageContext, name: string, { version, created, gate, move }: Outcome): Pick<Registered, 'registry' | 'gate' | 'alias'> {
  return {
    registry: { name, version: version.version, runId: version.runId, modelUri: ctx.registry.modelUri(version), created },
    gate,
    alias: { name: ctx.config.alias, moved: move.moved, ...(move.previous ? { previous: move.previous } : {}) },
  };
}

/** The gate's move of this alias to this version, if it ever made one (the alias history keeps it). */
async function gateMoveOf(registry: ModelRegistry, name: string, alias: string, version: string): Promise<AliasChange | undefined> {
  return (await registry.aliasHistory(name))[alias]?.findLast((change) => change.version === version && change.reason === 'gate passed');
}

/**
 * Registers a variant under its own name with what the stages found of it: lineage and checkpoint as
 * the fp32 model's, `variant` and `variant_of` (the fp32 version) tags, its error against the fp32
 * model, its latency, speed-ups and baseline. Its report goes to the registry (the run's report.json
 * is the fp32 model's).
 */
async function registerVariant(event: Benchmarked, variant: BenchmarkedVariant, fp32: ModelVersion, gate: GateVerdict, ctx: StageContext): Promise<{ version: ModelVersion; created: boolean }> {
  const { runId, checkpoint, training } = event.data;
  const name = variantModelName(ctx.config.modelName, variant.name);
  const model = await fetchModel(ctx.store, variant.onnx.uri);
  try {
    const { metadata } = await readModelSummary(model.path);
    const variantOf = { name: ctx.config.modelName, version: fp32.version, sha256: event.data.onnx.sha256 };
    const report = {
      runId,
      checkpoint,
      onnx: variant.onnx,
      variant: variant.name,
      variantOf,
      architecture: pick(metadata, ['variant', 'parameters', 'dims', 'depths', 'position_head', 'uncertainty_head']),
      ...(training ? { training } : {}),
      accuracy: { perOutput: variant.perOutput, tolerance: variant.tolerance, samples: event.data.parity.samples },
      benchmark: { provider: event.data.provider, threads: event.data.threads, perBatch: variant.perBatch, speedup: variant.speedup, baseline: variant.baseline },
      gate,
    };
    ctx.progress(`registering ${name}`);
    const lineage = registryFields(training);
    const speedups = Object.fromEntries(variant.speedup.flatMap((s) => [[`speedup_batch${s.batch}`, s.ratio], [`speedup_low_batch${s.batch}`, s.ratioInterval[0]], [`speedup_high_batch${s.batch}`, s.ratioInterval[1]]]));
    return await ctx.registry.register({
      name,
      sha256: variant.onnx.sha256,
      pipelineRunId: runId,
      modelPath: model.path,
      ...(model.externalData ? { externalDataPath: model.externalData.path } : {}),
      modelUri: variant.onnx.uri,
      tags: {
        ...lineage.tags,
        [PIPELINE_RUN_TAG]: runId,
        [ONNX_URI_TAG]: variant.onnx.uri,
        [GATE_TAG]: JSON.stringify(gate),
        checkpoint_uri: checkpoint.uri,
        checkpoint_sha256: checkpoint.sha256,
        variant: variant.name,
        variant_of: fp32.version,
        variant_of_sha256: variantOf.sha256,
        accuracy_max_abs: String(Math.max(...Object.values(variant.perOutput).map((e) => e.maxAbs))),
        ...Object.fromEntries(variant.speedup.map((s) => [`speedup_batch${s.batch}`, s.ratio.toFixed(3)])),
      },
      params: { ...lineage.params, ...pick(metadata, ['variant', 'parameters']), opset: String(variant.onnx.opset), checkpoint_uri: checkpoint.uri, checkpoint_sha256: checkpoint.sha256, quantization: variant.name },
      metrics: { ...lineage.metrics, model_bytes: modelBytes(variant.onnx), ...errorMetrics('accuracy', variant.perOutput), ...latencyMetrics(variant.perBatch, variant.baseline), ...speedups },
      ...(training?.mlflowRunId ? { trainingRunId: training.mlflowRunId } : {}),
      report,
    });
  } finally {
    await model.release();
  }
}

/** Registers the model with everything the stages found, and stores the run's report beside it. */
async function registerModel(event: Benchmarked, gate: GateVerdict, ctx: StageContext): Promise<{ version: ModelVersion; created: boolean }> {
  const { runId, onnx, checkpoint, parity, training } = event.data;
  const model = await fetchModel(ctx.store, onnx.uri);
  try {
    const { metadata } = await readModelSummary(model.path);
    const report = {
      runId,
      checkpoint,
      onnx,
      architecture: pick(metadata, ['variant', 'parameters', 'dims', 'depths', 'position_head', 'uncertainty_head']),
      ...(training ? { training } : {}),
      parity,
      benchmark: { provider: event.data.provider, threads: event.data.threads, sessionCreateMs: event.data.sessionCreateMs, perBatch: event.data.perBatch, baseline: event.data.baseline },
      gate,
    };
    const reportFile = join(ctx.scratchDir, `${runId}.report.json`);
    await writeAtomically(reportFile, JSON.stringify(report, null, 2));
    // Not `sha256`: the store checks that key against the content it serves, and this is the model's.
    await ctx.store.putFile(MODELS_BUCKET, reportKey(runId), reportFile, { 'run-id': runId, 'model-sha256': onnx.sha256 });
    await rm(reportFile, { force: true });
    ctx.progress(`registering ${ctx.config.modelName}`);
    const lineage = registryFields(training);
    return await ctx.registry.register({
      name: ctx.config.modelName,
      sha256: onnx.sha256,
      pipelineRunId: runId,
      modelPath: model.path,
      ...(model.externalData ? { externalDataPath: model.externalData.path } : {}),
      modelUri: onnx.uri,
      tags: {
        ...lineage.tags,
        [PIPELINE_RUN_TAG]: runId,
        [ONNX_URI_TAG]: onnx.uri,
        [GATE_TAG]: JSON.stringify(gate),
        checkpoint_uri: checkpoint.uri,
        checkpoint_sha256: checkpoint.sha256,
        parity_reference: parity.reference,
        parity_max_abs: String(Math.max(...Object.values(parity.perOutput).map((e) => e.maxAbs))),
      },
      params: { ...lineage.params, ...pick(metadata, ['variant', 'parameters']), opset: String(onnx.opset), checkpoint_uri: checkpoint.uri, checkpoint_sha256: checkpoint.sha256 },
      metrics: { ...lineage.metrics, ...stageMetrics(event) },
      ...(training?.mlflowRunId ? { trainingRunId: training.mlflowRunId } : {}),
      report,
    });
  } finally {
    await model.release();
  }
}

/** Size, parity errors, latency figures (with their sample counts) and the ratio to the alias holder. */
function stageMetrics(event: Benchmarked): Record<string, number> {
  const { onnx, parity, perBatch, baseline, sessionCreateMs } = event.data;
  return { model_bytes: modelBytes(onnx), session_create_ms: sessionCreateMs, ...errorMetrics('parity', parity.perOutput), ...latencyMetrics(perBatch, baseline) };
}

/** `<prefix>_max_abs_<output>` and `<prefix>_mean_abs_<output>` of each output. */
function errorMetrics(prefix: string, perOutput: Readonly<Record<string, { maxAbs: number; meanAbs: number }>>): Record<string, number> {
  return Object.fromEntries(Object.entries(perOutput).flatMap(([output, e]) => [[`${prefix}_max_abs_${output}`, e.maxAbs], [`${prefix}_mean_abs_${output}`, e.meanAbs]]));
}

/** Latency figures per batch (with their sample counts) and the batch-1 ratio to the alias holder. */
function latencyMetrics(perBatch: readonly LatencyStats[], baseline: Baseline | undefined): Record<string, number> {
  const metrics: Record<string, number> = {};
  for (const s of perBatch) {
    for (const p of ['p50', 'p90', 'p99', 'mean'] as const) if (s[p] !== undefined) metrics[`latency_${p}_batch${s.batch}_ms`] = s[p];
    metrics[`latency_p50_low_batch${s.batch}_ms`] = s.p50Interval[0];
    metrics[`latency_p50_high_batch${s.batch}_ms`] = s.p50Interval[1];
    metrics[`latency_n_batch${s.batch}`] = s.n;
    metrics[`throughput_batch${s.batch}`] = s.throughput;
  }
  if (baseline) {
    metrics['latency_ratio_batch1'] = baseline.ratio;
    metrics['latency_ratio_low_batch1'] = baseline.ratioInterval[0];
    metrics['latency_ratio_high_batch1'] = baseline.ratioInterval[1];
  }
  return metrics;
}

const pick = (record: Readonly<Record<string, string>>, keys: string[]) => Object.fromEntries(keys.filter((k) => k in record).map((k) => [k, record[k]!]));
