import { formatMs } from '../../shared/cli/format.ts';
import type { Config } from '../../shared/config/index.ts';
import { ErrorCodes, HeimdallError } from '../../shared/errors/index.ts';
import { createEvent } from '../../shared/events/index.ts';
import type { Baseline, LatencyStats } from '../../shared/events/schemas.ts';
import { isRegression } from '../../shared/gate/statistics.ts';
import { source, type StageContext, type StageHandler } from '../../shared/pipeline/stage.ts';
import { ONNX_URI_TAG, SHA256_TAG, type ModelVersion } from '../../shared/registry/model-registry.ts';
import { runBenchmark, type BatchResult, type BenchmarkResult } from '../../shared/runtime/benchmark.ts';
import { fetchUri, locateUri } from '../../shared/storage/object-store.ts';

/**
 * model.parity-checked -> model.benchmarked: onnxruntime latency in a process of its own (DESIGN §5),
 * with the model that holds the alias timed in the same worker, interleaved with the candidate, so
 * the gate reads a ratio of like with like and its interval.
 */
export const benchmarkHandler: StageHandler<'heimdall.model.parity-checked', 'heimdall.model.benchmarked'> = async (event, ctx) => {
  const { runId, onnx, training } = event.data;
  const settings = ctx.config.benchmark;
  const warnings: string[] = [];
  const holder = await aliasHolder(ctx, onnx.sha256);
  const model = await fetchUri(ctx.store, onnx.uri);
  let result: BenchmarkResult;
  let holderModel: Awaited<ReturnType<typeof fetchUri>> | undefined;
  try {
    holderModel = holder && (await fetchHolder(ctx, holder, warnings));
    const against = holderModel ? `, interleaved with version ${holder!.version} (${ctx.config.alias})` : '';
    ctx.progress(`opening a session on ${settings.provider}; per batch ${settings.batches.join(', ')}: warm-up until settled, then ${settings.budgetMs} ms of timed runs${against}`);
    result = await runBenchmark(
      { modelPath: model.path, modelSha256: onnx.sha256, ...(holderModel ? { holderPath: holderModel.path } : {}), provider: settings.provider, threads: settings.threads, batches: settings.batches, warmup: settings.warmup, budgetMs: settings.budgetMs, minRuns: settings.minRuns },
      { signal: ctx.signal, onBatch: (b) => ctx.progress(progressLine(b)) },
    );
  } finally {
    await Promise.all([model.release(), holderModel?.release()]);
  }
  for (const { candidate, warmup } of result.perBatch) {
    if (!warmup.settled) warnings.push(`batch ${candidate.batch}: timings had not settled after ${warmup.runs} warm-up runs (the warm-up time limit)`);
  }
  // The worker times the holder only when its model loaded (else it says why in the warnings).
  const baseline = holderModel && result.perBatch.every((b) => b.holder) ? baselineOf(holder!, result.perBatch, ctx.config) : undefined;
  // The gate decides what a regression means for the alias (register); here it is one figure among others.
  if (baseline?.regression) ctx.logger.info({ runId, baseline }, 'slower than the alias holder');
  return createEvent('heimdall.model.benchmarked', {
    stage: 'benchmark',
    source: source('benchmark'),
    data: {
      runId,
      checkpoint: event.data.checkpoint,
      onnx,
      ...(training ? { training } : {}),
      provider: result.provider,
      threads: result.threads,
      sessionCreateMs: result.sessionCreateMs,
      measurementMs: result.measurementMs,
      perBatch: result.perBatch.map((b) => b.candidate),
      ...(baseline ? { baseline } : {}),
      parity: { reference: event.data.reference, samples: event.data.samples, perOutput: event.data.perOutput, tolerance: event.data.tolerance, passed: event.data.passed },
      warnings: [...result.warnings, ...warnings],
    },
  });
};

/** The version holding the alias, when there is one to compare with: another model, with its ONNX file on record. */
async function aliasHolder(ctx: StageContext, sha256: string): Promise<ModelVersion | undefined> {
  const holder = await ctx.registry.getVersionByAlias(ctx.config.modelName, ctx.config.alias);
  if (!holder || holder.tags[SHA256_TAG] === sha256 || !holder.tags[SHA256_TAG] || !holder.tags[ONNX_URI_TAG]) return undefined;
  return holder;
}

/**
 * The holder's ONNX file. A file gone from the store (a lifecycle rule, a cleanup), or a uri this
 * store cannot read (the holder was registered from another store), leaves the benchmark without a
 * baseline and says so: a registry tag must not fail the candidate's run. Other errors (the store
 * unreachable) are retried as usual.
 */
async function fetchHolder(ctx: StageContext, holder: ModelVersion, warnings: string[]) {
  const uri = holder.tags[ONNX_URI_TAG]!;
  try {
    const { bucket, key } = locateUri(ctx.store, uri);
    const info = await ctx.store.stat(bucket, key);
    // The key is the run's: exporting the same checkpoint again (another opset) replaces the file.
    if (info && info.metadata[SHA256_TAG] !== holder.tags[SHA256_TAG]) {
      warnings.push(`no latency baseline: ${uri} no longer holds the model of version ${holder.version} (${ctx.config.alias})`);
      return undefined;
    }
    return await ctx.store.fetchFile(bucket, key, info ? { etag: info.etag } : undefined);
  } catch (error) {
    if (!(error instanceof HeimdallError && UNREADABLE_HOLDER.has(error.code))) throw error;
    warnings.push(`no latency baseline: the model of version ${holder.version} (${ctx.config.alias}) cannot be read from ${uri} (${error.code})`);
    return undefined;
  }
}

const UNREADABLE_HOLDER: ReadonlySet<string> = new Set([ErrorCodes.OBJECT_NOT_FOUND, ErrorCodes.INVALID_EVENT]);

/**
 * The gate's figures (DESIGN §3 The gate): the ratio at batch 1, where a deployment's latency is
 * felt; where batch 1 is not configured, the smallest batch timed, the nearest to it.
 */
function baselineOf(holder: ModelVersion, perBatch: readonly BatchResult[], config: Config): Baseline {
  const gateBatch = perBatch.find((b) => b.candidate.batch === 1) ?? perBatch.reduce((a, b) => (b.candidate.batch < a.candidate.batch ? b : a));
  const { ratio, interval } = gateBatch.ratio!;
  const threshold = config.benchmark.regressionThreshold;
  return {
    version: holder.version,
    sha256: holder.tags[SHA256_TAG]!,
    perBatch: perBatch.map((b) => b.holder!),
    ratio,
    ratioInterval: interval,
    regression: isRegression(interval, threshold),
    threshold,
  };
}

const stats = (s: LatencyStats) => `n ${s.n}, p50 ${formatMs(s.p50)} [${formatMs(s.p50Interval[0])}, ${formatMs(s.p50Interval[1])}]`;

function progressLine({ candidate, holder, ratio, warmup }: BatchResult): string {
  const line = `batch ${candidate.batch}: ${stats(candidate)}, ${candidate.throughput.toFixed(1)} samples/s, after ${warmup.runs} warm-up runs${warmup.settled ? '' : ' (not settled)'}`;
  return holder && ratio ? `${line}; alias holder ${stats(holder)}; ratio ${ratio.ratio.toFixed(3)} [${ratio.interval[0].toFixed(3)}, ${ratio.interval[1].toFixed(3)}]` : line;
}
