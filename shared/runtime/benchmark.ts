import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { LatencyStats } from '../events/schemas.ts';
import type { ExecutionProvider } from './session.ts';
import { startWorker } from './worker.ts';

export interface BenchmarkRequest {
  readonly modelPath: string;
  readonly provider: ExecutionProvider;
  /** 0: one per core. */
  readonly threads: number;
  /** Batch sizes with their number of timed runs, in order. */
  readonly batches: ReadonlyArray<{ readonly batch: number; readonly runs: number }>;
  readonly warmup: number;
}

export type BenchmarkMessage =
  | { kind: 'session'; provider: ExecutionProvider; threads: number; createMs: number; warnings: string[] }
  | { kind: 'batch'; batch: number; timings: number[] }
  | { kind: 'done' }
  | { kind: 'error'; message: string; code: string };

export interface BenchmarkResult {
  readonly provider: ExecutionProvider;
  readonly threads: number;
  readonly sessionCreateMs: number;
  readonly perBatch: LatencyStats[];
  readonly warnings: string[];
}

/** Latency statistics of a set of timings (ms), nearest-rank percentiles. */
export function latencyStats(batch: number, timings: readonly number[]): LatencyStats {
  const sorted = [...timings].sort((a, b) => a - b);
  const rank = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return { batch, p50: rank(50), p90: rank(90), p99: rank(99), mean, throughput: (batch * 1000) / mean };
}

/**
 * Benchmarks a model in a worker thread: session creation timed apart, warm-up runs, then timed runs
 * per batch size. `onBatch` reports progress as each batch size finishes.
 */
export function runBenchmark(request: BenchmarkRequest, options: { signal?: AbortSignal; onBatch?: (stats: LatencyStats) => void } = {}): Promise<BenchmarkResult> {
  return new Promise((resolve, reject) => {
    // A listener added to a signal that has already fired never runs.
    if (options.signal?.aborted) return reject(new HeimdallError(ErrorCodes.ABORTED, 'benchmark aborted before it started'));
    const worker = startWorker(new URL('./benchmark-worker.ts', import.meta.url), request);
    const perBatch: LatencyStats[] = [];
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
        const stats = latencyStats(message.batch, message.timings);
        perBatch.push(stats);
        options.onBatch?.(stats);
      } else if (message.kind === 'done') finish();
      else finish(new HeimdallError(message.code === ErrorCodes.INVALID_MODEL ? ErrorCodes.INVALID_MODEL : ErrorCodes.BENCHMARK_FAILED, message.message));
    });
    worker.on('error', (error) => finish(new HeimdallError(ErrorCodes.BENCHMARK_FAILED, `benchmark worker failed: ${error.message}`, { cause: error })));
    worker.on('exit', (code) => {
      if (!settled) finish(new HeimdallError(ErrorCodes.BENCHMARK_FAILED, `benchmark worker exited with code ${code} (out of memory?)`));
    });
  });
}

