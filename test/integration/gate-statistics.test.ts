/**
 * Issue 12's acceptance for the latency statistics, on this machine, through the real benchmark
 * (worker thread, onnxruntime, candidate and holder interleaved): the same model benchmarked as its
 * own challenger 20 times is never called a regression, and a larger variant of the architecture,
 * measured here to be at least 25 % slower, is called one 20 times out of 20. Batch 1 and a short
 * budget keep it to seconds; the threshold is the default (10 %).
 */
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { pyOrderedDict } from '../../shared/checkpoint/pickle-writer.ts';
import { writeTorchCheckpoint } from '../../shared/checkpoint/torch-writer.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { isRegression } from '../../shared/gate/statistics.ts';
import type { LocalizationNetSpec } from '../../shared/models/localization-net/architecture.ts';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { sampleStateDict } from '../../shared/models/localization-net/sample-weights.ts';
import { runBenchmark, type BatchResult } from '../../shared/runtime/benchmark.ts';
import { SMALL_SPEC } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const REPEATS = 20;
/** Wider late stages of the same architecture (measured here about 1.37x slower at batch 1). */
const LARGER_SPEC: LocalizationNetSpec = { ...SMALL_SPEC, dims: [16, 32, 64, 96] };

/**
 * One intra-op thread. onnxruntime gives each session a thread pool of its own, so with more the two
 * models run on different OS threads, and on a 2-core machine shared with the other test files,
 * whichever pool the scheduler crowds stays crowded for a 250 ms budget (measured at 2 threads: the
 * same model at 0.84-1.08 of itself, the larger variant at 1.01-1.74); at one thread both models run
 * on the same one (0.99-1.01 and 1.35-1.38); the default 3 s budget averages it out (2.5 s at 2
 * threads: 0.997-1.003 and 1.29-1.38).
 */
const { benchmark, benchmark: { regressionThreshold } } = loadConfig({ HEIMDALL_BENCHMARK_BATCHES: '1', HEIMDALL_BENCHMARK_BUDGET_MS: '250', HEIMDALL_BENCHMARK_THREADS: '1' });

let fast: string;
let slow: string;

async function onnxOf(name: string, spec: LocalizationNetSpec): Promise<string> {
  const dir = await tempDir('heimdall-gate-statistics-');
  const checkpoint = join(dir, `${name}.pth`);
  await writeTorchCheckpoint(checkpoint, pyOrderedDict(sampleStateDict(spec, 5).map(({ name, tensor }) => [name, tensor] as const)));
  await exportCheckpoint(checkpoint, join(dir, `${name}.onnx`));
  return join(dir, `${name}.onnx`);
}

/** Batch 1 of one benchmark run with the product's settings; `holder` timed interleaved when given. */
async function batch1(modelPath: string, holderPath?: string, budgetMs = benchmark.budgetMs): Promise<BatchResult> {
  const result = await runBenchmark({ modelPath, ...(holderPath ? { holderPath } : {}), provider: benchmark.provider, threads: benchmark.threads, batches: [1], warmup: benchmark.warmup, budgetMs, minRuns: benchmark.minRuns });
  return result.perBatch[0]!;
}

const summary = (results: readonly BatchResult[]) => results.map((r) => `${r.ratio!.ratio.toFixed(3)} [${r.ratio!.interval.map((v) => v.toFixed(3)).join(', ')}] n ${r.ratio!.n}`).join('\n');

beforeAll(async () => {
  [fast, slow] = await Promise.all([onnxOf('fast', SMALL_SPEC), onnxOf('slow', LARGER_SPEC)]);
});

describe('the latency gate on this machine', () => {
  it('has a premise: the larger variant is at least 25 % slower at batch 1, timed on its own', async () => {
    // Timed apart from the benchmark's code, with onnxruntime directly: both sessions in this process
    // on one intra-op thread (as the benchmark here), single runs taken in turn, so a burst of the
    // other test files' work on the 2 cores hits both models alike (runs of 300 ms one after the
    // other were moved by such bursts to 0.88-1.45 in one CI run); the median of the per-pair ratios.
    const options = { intraOpNumThreads: 1, interOpNumThreads: 1 };
    const [alone, larger] = await Promise.all([ort.InferenceSession.create(fast, options), ort.InferenceSession.create(slow, options)]);
    try {
      const feeds = { mel_spectrogram: new ort.Tensor('float32', new Float32Array(3 * 128 * 32).map((_, i) => Math.sin(i)), [1, 3, 128, 32]) };
      const timed = async (session: ort.InferenceSession) => {
        const started = performance.now();
        await session.run(feeds);
        return performance.now() - started;
      };
      for (let i = 0; i < 20; i++) {
        await timed(alone);
        await timed(larger);
      }
      const ratios: number[] = [];
      for (let pair = 0; pair < 301; pair++) {
        const fastMs = await timed(alone);
        ratios.push((await timed(larger)) / fastMs);
      }
      const sorted = [...ratios].sort((a, b) => a - b);
      const quartiles = [sorted[75]!, sorted[150]!, sorted[225]!].map((r) => r.toFixed(3)).join(' / ');
      expect(sorted[150]!, `per-pair ratio quartiles ${quartiles} (n ${ratios.length})`).toBeGreaterThanOrEqual(1.25);
    } finally {
      await Promise.all([alone.release(), larger.release()]);
    }
  });

  it(`never calls the same model a regression against itself (${REPEATS} benchmarks)`, async () => {
    const results: BatchResult[] = [];
    for (let i = 0; i < REPEATS; i++) results.push(await batch1(fast, fast));
    const called = results.filter((r) => isRegression(r.ratio!.interval, regressionThreshold));
    expect(called, summary(results)).toHaveLength(0);
    // Centred on 1, not merely short of 1.1: the comparison is of like with like.
    for (const r of results) {
      expect(r.ratio!.ratio, summary(results)).toBeGreaterThan(0.9);
      expect(r.ratio!.ratio, summary(results)).toBeLessThan(1.1);
    }
  });

  it(`calls the larger variant a regression against the smaller one ${REPEATS} times out of ${REPEATS}`, async () => {
    const results: BatchResult[] = [];
    for (let i = 0; i < REPEATS; i++) results.push(await batch1(slow, fast));
    const called = results.filter((r) => isRegression(r.ratio!.interval, regressionThreshold));
    expect(called, summary(results)).toHaveLength(REPEATS);
  });
});
