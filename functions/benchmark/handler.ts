import { formatMs } from '../../shared/cli/format.ts';
import type { Config } from '../../shared/config/index.ts';
import { ErrorCodes, HeimdallError, isRetriable } from '../../shared/errors/index.ts';
import { createEvent } from '../../shared/events/index.ts';
import type { Baseline, BenchmarkedVariant, EventData, LatencyStats, SkippedVariant } from '../../shared/events/schemas.ts';
import { isRegression, pairedRatio } from '../../shared/gate/statistics.ts';
import { variantModelName } from '../../shared/gate/variants.ts';
import { source, type StageContext, type StageHandler } from '../../shared/pipeline/stage.ts';
import { ONNX_URI_TAG, SHA256_TAG, type ModelVersion } from '../../shared/registry/model-registry.ts';
import { runBenchmark, type BatchResult, type BenchmarkResult } from '../../shared/runtime/benchmark.ts';
import type { Companion } from '../../shared/runtime/model-host.ts';
import { fetchModel, locateUri, type FetchedModel } from '../../shared/storage/object-store.ts';

/**
 * model.parity-checked -> model.benchmarked: onnxruntime latency in a process of its own (DESIGN §5),
 * with the model that holds the alias timed in the same worker, interleaved with the candidate, so
 * the gate reads a ratio of like with like and its interval. Each variant that passed parity is
 * timed in the same rounds, with its own alias holder (`<modelName>-<variant>`): its speed-up over
 * the fp32 model per batch and its baseline, computed as the fp32 model's.
 */
export const benchmarkHandler: StageHandler<'heimdall.model.parity-checked', 'heimdall.model.benchmarked'> = async (event, ctx) => {
  const { runId, onnx, training } = event.data;
  const settings = ctx.config.benchmark;
  const warnings: string[] = [];
  const holder = await aliasHolder(ctx, ctx.config.modelName, onnx.sha256);
  const candidates = (event.data.variants ?? []).filter((v) => v.passed);
  const model = await fetchModel(ctx.store, onnx.uri);
  const fetched: { release(): Promise<void> }[] = [model];
  let result: BenchmarkResult;
  let holderModel: FetchedModel | undefined;
  const variants: TimedVariant[] = [];
  const unfetched: SkippedVariant[] = [];
  try {
    holderModel = holder && (await fetchHolder(ctx, ctx.config.modelName, holder, warnings));
    if (holderModel) fetched.push(holderModel);
    for (const variant of candidates) {
      try {
        variants.push(await fetchVariant(ctx, variant, variants.reduce((n, v) => n + v.companions.length, 0), warnings, fetched));
      } catch (error) {
        // The variant's file gone from the store (a cleanup) holds the variant back, never the fp32 model; the store unreachable is retried as usual.
        if (!(error instanceof HeimdallError) || isRetriable(error.code)) throw error;
        unfetched.push({ name: variant.name, stage: 'benchmark', reason: `its model cannot be read from ${variant.onnx.uri} (${error.code})` });
      }
    }
    const against = holderModel ? `, interleaved with version ${holder!.version} (${ctx.config.alias})` : '';
    const beside = variants.length > 0 ? ` and the ${variants.map((v) => v.entry.name).join(', ')} variant` : '';
    ctx.progress(`opening a session on ${settings.provider}; per batch ${settings.batches.join(', ')}: warm-up until settled, then ${settings.budgetMs} ms of timed runs${against}${beside}`);
    result = await runBenchmark(
      {
        modelPath: model.path,
        modelSha256: onnx.sha256,
        ...(holderModel ? { holderPath: holderModel.path } : {}),
        companions: variants.flatMap((v) => v.companions),
        provider: settings.provider,
        threads: settings.threads,
        batches: settings.batches,
        warmup: settings.warmup,
        budgetMs: settings.budgetMs,
        minRuns: settings.minRuns,
      },
      { signal: ctx.signal, onBatch: (b) => ctx.progress(progressLine(b, variants)) },
    );
  } finally {
    await Promise.all(fetched.map((f) => f.release()));
  }
  for (const { candidate, warmup } of result.perBatch) {
    if (!warmup.settled) warnings.push(`batch ${candidate.batch}: timings had not settled after ${warmup.runs} warm-up runs (the warm-up time limit)`);
  }
  // The worker times the holder only when its model loaded (else it says why in the warnings).
  const baseline = holderModel && result.perBatch.every((b) => b.holder) ? baselineOf(holder!, result.perBatch.map((b) => ({ holder: b.holder!, ratio: b.ratio! })), ctx.config) : undefined;
  // The gate decides what a regression means for the alias (register); here it is one figure among others.
  if (baseline?.regression) ctx.logger.info({ runId, baseline }, 'slower than the alias holder');
  const timedVariants = event.data.variants ? variantResults(variants, result.perBatch, ctx.config) : undefined;
  const skippedVariants = [...(event.data.skippedVariants ?? []), ...unfetched, ...(timedVariants?.skipped ?? [])];
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
      ...(timedVariants ? { variants: timedVariants.benchmarked } : {}),
      ...(skippedVariants.length > 0 ? { skippedVariants } : {}),
    },
  });
};

type CheckedVariant = NonNullable<EventData<'heimdall.model.parity-checked'>['variants']>[number];

/** A variant to time: its parity entry, its alias holder (if it has a file to time), its companions (itself, then that holder) and where they start in the benchmark's list. */
interface TimedVariant {
  readonly entry: CheckedVariant;
  readonly holder?: ModelVersion;
  readonly companions: readonly Companion[];
  readonly offset: number;
}

/** The variant's file and its own alias holder's (of `<modelName>-<variant>`), fetched for the benchmark; each added to `fetched` for release. */
async function fetchVariant(ctx: StageContext, entry: CheckedVariant, offset: number, warnings: string[], fetched: { release(): Promise<void> }[]): Promise<TimedVariant> {
  const name = variantModelName(ctx.config.modelName, entry.name);
  const file = await fetchModel(ctx.store, entry.onnx.uri);
  fetched.push(file);
  const holder = await aliasHolder(ctx, name, entry.onnx.sha256);
  const holderFile = holder && (await fetchHolder(ctx, name, holder, warnings));
  if (holderFile) fetched.push(holderFile);
  return {
    entry,
    offset,
    ...(holderFile ? { holder: holder! } : {}),
    companions: [
      { path: file.path, unloadable: `${entry.name} variant not benchmarked: its model does not load here` },
      ...(holderFile ? [{ path: holderFile.path, unloadable: `no latency baseline for the ${entry.name} variant: the model of ${name} version ${holder!.version} (${ctx.config.alias}) does not load here` }] : []),
    ],
  };
}

/**
 * Each variant's figures from the companions' series: its latency, its
 * speed-up over the fp32 model (the paired ratio variant / fp32, per batch) and its baseline against
 * its own alias holder. One that did not load is held back with the reason.
 */
function variantResults(variants: readonly TimedVariant[], perBatch: readonly BatchResult[], config: Config): { benchmarked: BenchmarkedVariant[]; skipped: SkippedVariant[] } {
  const benchmarked: BenchmarkedVariant[] = [];
  const skipped: SkippedVariant[] = [];
  for (const variant of variants) {
    const own = perBatch.map((b) => b.companions[variant.offset]);
    const held = variant.holder ? perBatch.map((b) => b.companions[variant.offset + 1]) : [];
    const { name, onnx, perOutput, tolerance } = variant.entry;
    if (!own.every((s) => s !== undefined)) {
      skipped.push({ name, stage: 'benchmark', reason: 'its model does not load in onnxruntime here (see the benchmark warnings)' });
      continue;
    }
    const speedup = perBatch.map((b, i) => {
      const { ratio, interval } = pairedRatio(own[i]!.runs, b.candidateRuns);
      return { batch: b.candidate.batch, ratio, ratioInterval: interval };
    });
    const baseline = variant.holder && held.length > 0 && held.every((s) => s !== undefined)
      ? baselineOf(variant.holder, held.map((s, i) => ({ holder: s!.stats, ratio: pairedRatio(own[i]!.runs, s!.runs) })), config)
      : undefined;
    benchmarked.push({ name, onnx, perBatch: own.map((s) => s!.stats), speedup, ...(baseline ? { baseline } : {}), perOutput, tolerance });
  }
  return { benchmarked, skipped };
}

/** The version of `name` holding the alias, when there is one to compare with: another model, with its ONNX file on record. */
async function aliasHolder(ctx: StageContext, name: string, sha256: string): Promise<ModelVersion | undefined> {
  const holder = await ctx.registry.getVersionByAlias(name, ctx.config.alias);
  if (!holder || holder.tags[SHA256_TAG] === sha256 || !holder.tags[SHA256_TAG] || !holder.tags[ONNX_URI_TAG]) return undefined;
  return holder;
}

/**
 * The holder's ONNX file. A file gone from the store (a lifecycle rule, a cleanup), or a uri this
 * store cannot read (the holder was registered from another store), leaves the benchmark without a
 * baseline and says so: a registry tag must not fail the candidate's run. Other errors (the store
 * unreachable) are retried as usual.
 */
async function fetchHolder(ctx: StageContext, name: string, holder: ModelVersion, warnings: string[]) {
  const uri = holder.tags[ONNX_URI_TAG]!;
  // The fp32 model's warnings keep their words; a variant's holder is named.
  const of = name === ctx.config.modelName ? '' : ` of ${name}`;
  try {
    const { bucket, key } = locateUri(ctx.store, uri);
    const info = await ctx.store.stat(bucket, key);
    // The key is the run's: exporting the same checkpoint again (another opset) replaces the file.
    if (info && info.metadata[SHA256_TAG] !== holder.tags[SHA256_TAG]) {
      warnings.push(`no latency baseline${of}: ${uri} no longer holds the model of version ${holder.version} (${ctx.config.alias})`);
      return undefined;
    }
    return await fetchModel(ctx.store, uri, info ? { etag: info.etag } : undefined);
  } catch (error) {
    if (!(error instanceof HeimdallError && UNREADABLE_HOLDER.has(error.code))) throw error;
    warnings.push(`no latency baseline${of}: the model of version ${holder.version} (${ctx.config.alias}) cannot be read from ${uri} (${error.code})`);
    return undefined;
  }
}

const UNREADABLE_HOLDER: ReadonlySet<string> = new Set([ErrorCodes.OBJECT_NOT_FOUND, ErrorCodes.INVALID_EVENT]);

/**
 * The gate's figures (DESIGN §3 The gate): the ratio at batch 1, where a deployment's latency is
 * felt; where batch 1 is not configured, the smallest batch timed, the nearest to it.
 */
function baselineOf(holder: ModelVersion, perBatch: readonly { holder: LatencyStats; ratio: ReturnType<typeof pairedRatio> }[], config: Config): Baseline {
  const gateBatch = perBatch.find((b) => b.holder.batch === 1) ?? perBatch.reduce((a, b) => (b.holder.batch < a.holder.batch ? b : a));
  const { ratio, interval } = gateBatch.ratio;
  const threshold = config.benchmark.regressionThreshold;
  return {
    version: holder.version,
    sha256: holder.tags[SHA256_TAG]!,
    perBatch: perBatch.map((b) => b.holder),
    ratio,
    ratioInterval: interval,
    regression: isRegression(interval, threshold),
    threshold,
  };
}

const stats = (s: LatencyStats) => `n ${s.n}, p50 ${formatMs(s.p50)} [${formatMs(s.p50Interval[0])}, ${formatMs(s.p50Interval[1])}]`;

function progressLine({ candidate, holder, ratio, warmup, companions }: BatchResult, variants: readonly TimedVariant[]): string {
  const line = `batch ${candidate.batch}: ${stats(candidate)}, ${candidate.throughput.toFixed(1)} samples/s, after ${warmup.runs} warm-up runs${warmup.settled ? '' : ' (not settled)'}`;
  const withHolder = holder && ratio ? `${line}; alias holder ${stats(holder)}; ratio ${ratio.ratio.toFixed(3)} [${ratio.interval[0].toFixed(3)}, ${ratio.interval[1].toFixed(3)}]` : line;
  const beside = variants.map((v) => {
    const own = companions[v.offset];
    return own ? `; ${v.entry.name} ${stats(own.stats)}` : '';
  });
  return withHolder + beside.join('');
}
