import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { LatencyStats } from '../events/schemas.ts';
import { latencyStats, pairedRatio } from '../gate/statistics.ts';
import { openModel, type BatchTimed, type Companion } from './model-host.ts';
import type { ExecutionProvider } from './session.ts';
import type { TimingSettings } from './timing.ts';

export interface BenchmarkRequest extends TimingSettings {
  readonly modelPath: string;
  /** The model's sha256: where the run shares its sessions (withSharedModels), the one its earlier stages opened is timed. */
  readonly modelSha256?: string;
  /** The model holding the alias: timed in the same process, interleaved with the candidate; the gate's comparison. */
  readonly holderPath?: string;
  /** More models timed in the same rounds (the variants and their alias holders), after the holder. */
  readonly companions?: readonly Companion[];
  readonly provider: ExecutionProvider;
  /** 0: one per core. */
  readonly threads: number;
  /** Batch sizes, in order. */
  readonly batches: readonly number[];
}

/** A model's timed runs at one batch size, in round order (what pairedRatio pairs), and their figures. */
export interface TimedSeries {
  readonly stats: LatencyStats;
  readonly runs: readonly number[];
}

/** One batch size's figures: the candidate's, with a holder its figures and the paired ratio, and each companion's (undefined: it did not load). */
export interface BatchResult {
  readonly candidate: LatencyStats;
  readonly candidateRuns: readonly number[];
  readonly holder?: LatencyStats;
  readonly ratio?: ReturnType<typeof pairedRatio>;
  readonly companions: readonly (TimedSeries | undefined)[];
  readonly warmup: { readonly runs: number; readonly settled: boolean };
  /** Wall time of this batch size's warm-up and timed runs: what the configured budget and run counts decide. */
  readonly measureMs: number;
}

export interface BenchmarkResult {
  readonly provider: ExecutionProvider;
  readonly threads: number;
  readonly sessionCreateMs: number;
  /** Wall time of all warm-up and timed runs (the sum of the batches' `measureMs`). */
  readonly measurementMs: number;
  readonly perBatch: BatchResult[];
  readonly warnings: string[];
}

/**
 * Benchmarks a model in the process its session lives in (model-host.ts; DESIGN §5): session
 * creation timed apart, then per batch size a warm-up until the timings settle and timed runs
 * within the budget; with a holder and companions, the models alternate on the same input. `onBatch` reports
 * progress as each batch size finishes. A model onnxruntime refuses is INVALID_MODEL; any other
 * failure BENCHMARK_FAILED; a stop ABORTED.
 */
export async function runBenchmark(request: BenchmarkRequest, options: { signal?: AbortSignal; onBatch?: (result: BatchResult) => void } = {}): Promise<BenchmarkResult> {
  try {
    const model = await openModel(request.modelPath, { provider: request.provider, threads: request.threads }, { ...(options.signal ? { signal: options.signal } : {}), ...(request.modelSha256 ? { sha256: request.modelSha256 } : {}) });
    try {
      const perBatch: BatchResult[] = [];
      const { batches, warmup, budgetMs, minRuns } = request;
      const holder = request.holderPath ? [{ path: request.holderPath, unloadable: "no latency baseline: the alias holder's model does not load here" }] : [];
      const warnings = await model.time({ batches, warmup, budgetMs, minRuns, companions: [...holder, ...(request.companions ?? [])] }, (timed) => {
        const result = batchResult(timed, holder.length > 0);
        perBatch.push(result);
        options.onBatch?.(result);
      });
      return {
        provider: model.provider,
        threads: model.threads,
        sessionCreateMs: model.createMs,
        measurementMs: perBatch.reduce((sum, b) => sum + b.measureMs, 0),
        perBatch,
        warnings: [...model.warnings, ...warnings],
      };
    } finally {
      await model.close();
    }
  } catch (error) {
    if (options.signal?.aborted) throw new HeimdallError(ErrorCodes.ABORTED, 'benchmark aborted', { cause: error });
    if (error instanceof HeimdallError && error.code === ErrorCodes.INVALID_MODEL) throw error;
    const message = error instanceof Error ? error.message : String(error);
    throw new HeimdallError(ErrorCodes.BENCHMARK_FAILED, message, { cause: error });
  }
}

function batchResult({ batch, warmup, measureMs, candidate, companions }: BatchTimed, withHolder: boolean): BatchResult {
  const holder = withHolder ? companions[0] : null;
  return {
    candidate: latencyStats(batch, candidate),
    candidateRuns: candidate,
    ...(holder ? { holder: latencyStats(batch, holder), ratio: pairedRatio(candidate, holder) } : {}),
    companions: companions.slice(withHolder ? 1 : 0).map((runs) => (runs ? { stats: latencyStats(batch, runs), runs } : undefined)),
    warmup,
    measureMs,
  };
}
