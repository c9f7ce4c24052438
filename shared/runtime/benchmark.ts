import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { LatencyStats } from '../events/schemas.ts';
import { latencyStats, pairedRatio } from '../gate/statistics.ts';
import type { ExecutionProvider } from './session.ts';
import { startWorker } from './worker.ts';

export interface BenchmarkRequest {
  readonly modelPath: string;
  /** The model holding the alias: timed in the same worker, interleaved with the candidate. */
  readonly holderPath?: string;
  readonly provider: ExecutionProvider;
  /** 0: one per core. */
  readonly threads: number;
  /** Batch sizes, in order. */
  readonly batches: readonly number[];
  /** Warm-up runs at least per batch size; more until the timings settle. */
  readonly warmup: number;
  /** Time for the timed runs of each batch size (both models together); warm-up may take as long again. */
  readonly budgetMs: number;
  /** Timed runs at least per batch size, even past the budget. */
  readonly minRuns: number;
}

export type BenchmarkMessage =
  | { kind: 'session'; provider: ExecutionProvider; threads: number; createMs: number; warnings: string[] }
  | { kind: 'batch'; batch: number; warmup: { runs: number; settled: boolean }; candidate: number[]; holder?: number[] }
  | { kind: 'done' }
  | { kind: 'error'; message: string; code: string };

/** One batch size's figures: the candidate's, and with a holder its figures and the paired ratio. */
export interface BatchResult {
  readonly candidate: LatencyStats;
  readonly holder?: LatencyStats;
  readonly ratio?: ReturnType<typeof pairedRatio>;
  readonly warmup: { readonly runs: number; readonly settled: boolean };
}

export interface BenchmarkResult {
  readonly provider: ExecutionProvider;
  readonly threads: number;
  readonly sessionCreateMs: number;
  readonly perBatch: BatchResult[];
  readonly warnings: string[];
}

/**
 * Benchmarks a model in a worker thread (DESIGN §5): session creation timed apart, then per batch
 * size a warm-up until the timings settle and timed runs within the budget; with a holder, the two
 * models alternate on the same input. `onBatch` reports progress as each batch size finishes.
 */
export function runBenchmark(request: BenchmarkRequest, options: { signal?: AbortSignal; onBatch?: (result: BatchResult) => void } = {}): Promise<BenchmarkResult> {
  return new Promise((resolve, reject) => {
    // A listener added to a signal that has already fired never runs.
    if (options.signal?.aborted) return reject(new HeimdallError(ErrorCodes.ABORTED, 'benchmark aborted before it started'));
    const worker = startWorker(new URL('./benchmark-worker.ts', import.meta.url), request);
    const perBatch: BatchResult[] = [];
    let session: Extract<BenchmarkMessage, { kind: 'session' }> | undefined;
    let settled = false;
    const finish = (error?: HeimdallError) => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener('abort', abort);
      void worker.terminate();
      if (error) reject(error);
      else resolve({ provider: session!.provider, threads: session!.threads, sessionCreateMs: session!.createMs, perBatch, warnings: session!.warnings });
    };
    const abort = () => finish(new HeimdallError(ErrorCodes.ABORTED, 'benchmark aborted'));
    options.signal?.addEventListener('abort', abort);
    worker.on('message', (message: BenchmarkMessage) => {
      if (message.kind === 'session') session = message;
      else if (message.kind === 'batch') {
        const result = batchResult(message);
        perBatch.push(result);
        options.onBatch?.(result);
      } else if (message.kind === 'done') finish();
      else finish(new HeimdallError(message.code === ErrorCodes.INVALID_MODEL ? ErrorCodes.INVALID_MODEL : ErrorCodes.BENCHMARK_FAILED, message.message));
    });
    worker.on('error', (error) => finish(new HeimdallError(ErrorCodes.BENCHMARK_FAILED, `benchmark worker failed: ${error.message}`, { cause: error })));
    worker.on('exit', (code) => {
      if (!settled) finish(new HeimdallError(ErrorCodes.BENCHMARK_FAILED, `benchmark worker exited with code ${code} (out of memory?)`));
    });
  });
}

function batchResult({ batch, warmup, candidate, holder }: Extract<BenchmarkMessage, { kind: 'batch' }>): BatchResult {
  return {
    candidate: latencyStats(batch, candidate),
    ...(holder ? { holder: latencyStats(batch, holder), ratio: pairedRatio(candidate, holder) } : {}),
    warmup,
  };
}
