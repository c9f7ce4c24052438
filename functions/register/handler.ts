import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { createEvent, type CloudEvent } from '../../shared/events/index.ts';
import type { GateVerdict } from '../../shared/events/schemas.ts';
import { decideGate } from '../../shared/gate/checks.ts';
import { GATE_ACTOR, promote } from '../../shared/gate/promotion.ts';
import { registryFields } from '../../shared/lineage/registry-fields.ts';
import { readModelSummary } from '../../shared/onnx/reader.ts';
import { source, type StageContext, type StageHandler } from '../../shared/pipeline/stage.ts';
import { GATE_TAG, ONNX_URI_TAG, PIPELINE_RUN_TAG, type AliasChange, type ModelRegistry, type ModelVersion } from '../../shared/registry/model-registry.ts';
import { gateVerdictOf } from '../../shared/registry/versions.ts';
import { writeAtomically } from '../../shared/storage/fs.ts';
import { fetchUri, MODELS_BUCKET, reportKey } from '../../shared/storage/object-store.ts';

type Benchmarked = CloudEvent<'heimdall.model.benchmarked'>;

/**
 * model.benchmarked -> model.registered: always registers the model (idempotent by its sha256),
 * with params, metrics and tags from every stage and its training lineage, and stores the run's
 * report; then the gate compares it with the alias holder and, when no blocking check fails,
 * moves the alias (the runners announce the move as `model.promoted`: shared/pipeline/follow-ups.ts).
 */
export const registerHandler: StageHandler<'heimdall.model.benchmarked', 'heimdall.model.registered'> = async (event, ctx) => {
  const { onnx, baseline, training } = event.data;
  const { modelName: name, alias } = ctx.config;
  const existing = await ctx.registry.findVersionBySha256(name, onnx.sha256);
  const holder = await ctx.registry.getVersionByAlias(name, alias);
  const earlierMove = existing ? await gateMoveOf(ctx.registry, name, alias, existing.version) : undefined;
  // The gate moves an alias once per version: a redelivery, or the same checkpoint run again, reports
  // that move and never repeats it (which would undo a rollback made since). To put an old version
  // back, promote it by hand.
  if (existing && earlierMove) {
    return registered(event, ctx, existing, false, gateVerdictOf(existing.tags[GATE_TAG]) ?? decideGate({ config: ctx.config.gate, holder, baseline, training }), {
      moved: holder?.version === existing.version,
      previous: earlierMove.previous,
    });
  }
  const gate = decideGate({ config: ctx.config.gate, holder, baseline, training });
  const { version, created } = existing ? { version: existing, created: false } : await registerModel(event, gate, ctx);
  // Held back, or already holding the alias by a move by hand: nothing for the gate to move.
  if (!gate.passed || holder?.version === version.version) return registered(event, ctx, version, created, gate, { moved: false, previous: holder?.version });
  ctx.progress(`gate passed: moving ${name}@${alias} to version ${version.version}`);
  // Compare-and-set: when another run moved the alias since this gate read it, the move is refused
  // (retriable), and the redelivery decides again against the new holder.
  const { previous } = await promote(ctx.registry, { name, alias, version: version.version, reason: 'gate passed', actor: GATE_ACTOR, expectedHolder: holder?.version ?? null });
  return registered(event, ctx, version, created, gate, { moved: true, previous });
};

function registered(event: Benchmarked, ctx: StageContext, version: ModelVersion, created: boolean, gate: GateVerdict, move: { moved: boolean; previous?: string | undefined }): CloudEvent<'heimdall.model.registered'> {
  const { runId, onnx, training } = event.data;
  return createEvent('heimdall.model.registered', {
    stage: 'register',
    source: source('register'),
    data: {
      runId,
      registry: { name: ctx.config.modelName, version: version.version, runId: version.runId, modelUri: ctx.registry.modelUri(version), created },
      gate,
      alias: { name: ctx.config.alias, moved: move.moved, ...(move.previous ? { previous: move.previous } : {}) },
      onnx,
      ...(training ? { training } : {}),
    },
  });
}

/** The gate's move of this alias to this version, if it ever made one (the alias history keeps it). */
async function gateMoveOf(registry: ModelRegistry, name: string, alias: string, version: string): Promise<AliasChange | undefined> {
  return (await registry.aliasHistory(name))[alias]?.findLast((change) => change.version === version && change.reason === 'gate passed');
}

/** Registers the model with everything the stages found, and stores the run's report beside it. */
async function registerModel(event: Benchmarked, gate: GateVerdict, ctx: StageContext): Promise<{ version: ModelVersion; created: boolean }> {
  const { runId, onnx, checkpoint, parity, training } = event.data;
  const model = await fetchUri(ctx.store, onnx.uri);
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
  const metrics: Record<string, number> = { model_bytes: onnx.bytes, session_create_ms: sessionCreateMs };
  for (const [output, error] of Object.entries(parity.perOutput)) {
    metrics[`parity_max_abs_${output}`] = error.maxAbs;
    metrics[`parity_mean_abs_${output}`] = error.meanAbs;
  }
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
