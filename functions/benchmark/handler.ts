import { createEvent } from '../../shared/events/index.ts';
import { source, type StageHandler } from '../../shared/pipeline/stage.ts';
import { LATENCY_TAG, SHA256_TAG } from '../../shared/registry/model-registry.ts';
import { runBenchmark } from '../../shared/runtime/benchmark.ts';
import { fetchUri } from '../../shared/storage/object-store.ts';

/** Timed runs for a batch size: the configured count at batch 1, fewer for big batches (same order of wall time). */
export const runsFor = (runs: number, batch: number) => Math.max(3, Math.round(runs / Math.sqrt(batch)));

/**
 * model.parity-checked -> model.benchmarked: onnxruntime latency in a worker thread (session creation
 * timed apart, warm-up, then timed runs per batch size), compared with the model that holds the
 * alias now; slower than it by more than the threshold on batch-1 p50 is flagged as a regression.
 */
export const benchmarkHandler: StageHandler<'heimdall.model.parity-checked', 'heimdall.model.benchmarked'> = async (event, ctx) => {
  const { runId, onnx } = event.data;
  const settings = ctx.config.benchmark;
  const model = await fetchUri(ctx.store, onnx.uri);
  const batches = settings.batches.map((batch) => ({ batch, runs: runsFor(settings.runs, batch) }));
  ctx.progress(`opening a session on ${settings.provider}; ${settings.warmup} warm-up + ${batches.map((b) => `${b.runs}x batch ${b.batch}`).join(', ')}`);
  let result;
  try {
    result = await runBenchmark(
      { modelPath: model.path, provider: settings.provider, threads: settings.threads, batches, warmup: settings.warmup },
      { signal: ctx.signal, onBatch: (s) => ctx.progress(`batch ${s.batch}: p50 ${s.p50.toFixed(1)} ms, ${s.throughput.toFixed(1)} samples/s`) },
    );
  } finally {
    await model.release();
  }
  const { perBatch } = result;
  const batch1 = perBatch.find((s) => s.batch === 1)!;
  const holder = await ctx.registry.getVersionByAlias(ctx.config.modelName, ctx.config.alias);
  const baselineP50 = Number(holder?.tags[LATENCY_TAG]);
  const baseline =
    holder && Number.isFinite(baselineP50) && holder.tags[SHA256_TAG] !== onnx.sha256
      ? {
          version: holder.version,
          p50: baselineP50,
          ratio: batch1.p50 / baselineP50,
          regression: batch1.p50 > baselineP50 * (1 + settings.regressionThreshold),
          threshold: settings.regressionThreshold,
        }
      : undefined;
  if (baseline?.regression) ctx.logger.warn({ runId, baseline }, 'latency regression against the alias holder');
  return createEvent('heimdall.model.benchmarked', {
    stage: 'benchmark',
    source: source('benchmark'),
    data: {
      runId,
      checkpoint: event.data.checkpoint,
      onnx,
      provider: result.provider,
      threads: result.threads,
      sessionCreateMs: result.sessionCreateMs,
      perBatch,
      ...(baseline ? { baseline } : {}),
      parity: { reference: event.data.reference, samples: event.data.samples, perOutput: event.data.perOutput, tolerance: event.data.tolerance, passed: event.data.passed },
      warnings: result.warnings,
    },
  });
};
