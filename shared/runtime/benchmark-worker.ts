// Runs in a worker thread: onnxruntime inference is CPU-bound and must not stall the event loop
// that answers health checks and sends JetStream heartbeats.
import { parentPort, workerData } from 'node:worker_threads';
import { openSession, sampleInput } from './session.ts';
import type { BenchmarkRequest, BenchmarkMessage } from './benchmark.ts';

const request = workerData as BenchmarkRequest;
const post = (message: BenchmarkMessage) => parentPort!.postMessage(message);

try {
  const { session, provider, threads, createMs, warnings } = await openSession(request.modelPath, { provider: request.provider, threads: request.threads });
  post({ kind: 'session', provider, threads, createMs, warnings: [...warnings] });
  for (const { batch, runs } of request.batches) {
    let feeds;
    try {
      feeds = { mel_spectrogram: sampleInput(batch) };
    } catch (error) {
      throw new Error(`cannot allocate the batch-${batch} input (${batch * 3 * 128 * 32 * 4} bytes): ${(error as Error).message}`);
    }
    for (let i = 0; i < request.warmup; i++) await session.run(feeds);
    const timings: number[] = [];
    for (let i = 0; i < runs; i++) {
      const started = performance.now();
      await session.run(feeds);
      timings.push(performance.now() - started);
    }
    post({ kind: 'batch', batch, timings });
  }
  await session.release();
  post({ kind: 'done' });
} catch (error) {
  post({ kind: 'error', message: (error as Error).message, code: (error as { code?: string }).code ?? 'BENCHMARK_FAILED' });
}
