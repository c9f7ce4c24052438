import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { createEvent } from '../../shared/events/index.ts';
import { readModelSummary } from '../../shared/onnx/reader.ts';
import { source, type StageHandler } from '../../shared/pipeline/stage.ts';
import { LATENCY_TAG } from '../../shared/registry/model-registry.ts';
import { writeAtomically } from '../../shared/storage/fs.ts';
import { fetchUri, MODELS_BUCKET, reportKey } from '../../shared/storage/object-store.ts';

/**
 * model.benchmarked -> model.registered: registers the model under the configured name and points
 * the alias at it, with params, metrics and tags from every stage, and stores the run's report.
 * Idempotent by the model's sha256: the same model is never registered twice.
 */
export const registerHandler: StageHandler<'heimdall.model.benchmarked', 'heimdall.model.registered'> = async (event, ctx) => {
  const { runId, onnx, checkpoint, parity, perBatch } = event.data;
  const { modelName: name, alias } = ctx.config;
  const existing = await ctx.registry.findVersionBySha256(name, onnx.sha256);
  let version = existing;
  let created = false;
  if (!existing) {
    const model = await fetchUri(ctx.store, onnx.uri);
    try {
      const { metadata } = await readModelSummary(model.path);
      const report = { runId, checkpoint, onnx, architecture: pick(metadata, ['variant', 'parameters', 'dims', 'depths', 'position_head', 'uncertainty_head']), parity, benchmark: { provider: event.data.provider, threads: event.data.threads, sessionCreateMs: event.data.sessionCreateMs, perBatch, baseline: event.data.baseline } };
      const reportFile = join(ctx.scratchDir, `${runId}.report.json`);
      await writeAtomically(reportFile, JSON.stringify(report, null, 2));
      await ctx.store.putFile(MODELS_BUCKET, reportKey(runId), reportFile, { 'run-id': runId, sha256: onnx.sha256 });
      await rm(reportFile, { force: true });
      ctx.progress(`registering ${name} (alias ${alias})`);
      const metrics: Record<string, number> = { model_bytes: onnx.bytes, session_create_ms: event.data.sessionCreateMs };
      for (const [output, error] of Object.entries(parity.perOutput)) {
        metrics[`parity_max_abs_${output}`] = error.maxAbs;
        metrics[`parity_mean_abs_${output}`] = error.meanAbs;
      }
      for (const s of perBatch) {
        for (const p of ['p50', 'p90', 'p99', 'mean'] as const) metrics[`latency_${p}_batch${s.batch}_ms`] = s[p];
        metrics[`throughput_batch${s.batch}`] = s.throughput;
      }
      const batch1 = perBatch.find((s) => s.batch === 1);
      const registration = await ctx.registry.register({
        name,
        alias,
        sha256: onnx.sha256,
        pipelineRunId: runId,
        modelPath: model.path,
        modelUri: onnx.uri,
        tags: {
          checkpoint_uri: checkpoint.uri,
          checkpoint_sha256: checkpoint.sha256,
          onnx_uri: onnx.uri,
          parity_reference: parity.reference,
          parity_max_abs: String(Math.max(...Object.values(parity.perOutput).map((e) => e.maxAbs))),
          ...(batch1 ? { [LATENCY_TAG]: String(batch1.p50) } : {}),
          ...(event.data.baseline?.regression ? { latency_regression: 'true' } : {}),
        },
        params: { ...pick(metadata, ['variant', 'parameters']), opset: String(onnx.opset), checkpoint_uri: checkpoint.uri, checkpoint_sha256: checkpoint.sha256 },
        metrics,
        report,
      });
      version = registration.version;
      created = registration.created;
    } finally {
      await model.release();
    }
  }
  return createEvent('heimdall.model.registered', {
    stage: 'register',
    source: source('register'),
    data: {
      runId,
      registry: { name, version: version!.version, alias, runId: version!.runId, modelUri: ctx.registry.modelUri(version!), created },
      onnx,
    },
  });
};

const pick = (record: Readonly<Record<string, string>>, keys: string[]) => Object.fromEntries(keys.filter((k) => k in record).map((k) => [k, record[k]!]));
