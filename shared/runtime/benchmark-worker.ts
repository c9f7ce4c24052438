// Runs in a worker thread: onnxruntime inference is CPU-bound and must not stall the event loop
// that answers health checks and sends JetStream heartbeats.
import { parentPort, workerData } from 'node:worker_threads';
import type * as ort from 'onnxruntime-node';
import { ErrorCodes } from '../errors/index.ts';
import { isSettled, minSamplesForInterval } from '../gate/statistics.ts';
import { openSession, sampleInput } from './session.ts';
import type { BenchmarkRequest, BenchmarkMessage } from './benchmark.ts';

const request = workerData as BenchmarkRequest;
const post = (message: BenchmarkMessage) => parentPort!.postMessage(message);
/** Every batch size gets a p50 interval, whatever minRuns says. */
const minRounds = Math.max(request.minRuns, minSamplesForInterval());

type Feeds = Record<string, ort.Tensor>;

async function timeRun(session: ort.InferenceSession, feeds: Feeds): Promise<number> {
  const started = performance.now();
  await session.run(feeds);
  return performance.now() - started;
}

/**
 * One round times every session once on the same input. With two, the order alternates (ABBA), so
 * whatever the first run of a round leaves behind (warm caches, threads still awake) favours each
 * model equally often. Returns each session's timing in the sessions' order.
 */
async function round(sessions: readonly ort.InferenceSession[], feeds: Feeds, index: number): Promise<number[]> {
  const order = index % 2 === 0 ? sessions.map((_, i) => i) : sessions.map((_, i) => sessions.length - 1 - i);
  const timings = new Array<number>(sessions.length);
  for (const i of order) timings[i] = await timeRun(sessions[i]!, feeds);
  return timings;
}

/** Rounds until every session's timings settle (at least `warmup`), or until the budget's worth of time is spent. */
async function warmUp(sessions: readonly ort.InferenceSession[], feeds: Feeds): Promise<{ runs: number; settled: boolean }> {
  const series = sessions.map(() => [] as number[]);
  const started = performance.now();
  for (let runs = 0; ; runs++) {
    const settled = series.every((timings) => isSettled(timings));
    if (runs >= request.warmup && (settled || performance.now() - started >= request.budgetMs)) return { runs, settled };
    (await round(sessions, feeds, runs)).forEach((t, i) => series[i]!.push(t));
  }
}

/** Timed rounds until the budget is spent, but at least minRounds. */
async function timed(sessions: readonly ort.InferenceSession[], feeds: Feeds): Promise<number[][]> {
  const series = sessions.map(() => [] as number[]);
  const started = performance.now();
  for (let rounds = 0; rounds < minRounds || performance.now() - started < request.budgetMs; rounds++) {
    (await round(sessions, feeds, rounds)).forEach((t, i) => series[i]!.push(t));
  }
  return series;
}

try {
  // No spinning: with the holder's session beside the candidate's, the idle one's spinning threads
  // take the cores the other is timed on (the same model against itself, 20 runs of 250 ms at 2
  // threads on a loaded 2-core machine: ratios 0.65-1.52 spinning, 0.995-1.008 not). Off without a holder too, so every figure
  // is measured the same way.
  const options = { provider: request.provider, threads: request.threads, spinning: false };
  const candidate = await openSession(request.modelPath, options);
  const warnings = [...candidate.warnings];
  const holder = request.holderPath ? await openHolder(request.holderPath, options, warnings) : undefined;
  post({ kind: 'session', provider: candidate.provider, threads: candidate.threads, createMs: candidate.createMs, warnings });
  const sessions = holder ? [candidate.session, holder] : [candidate.session];
  for (const batch of request.batches) {
    let feeds: Feeds;
    try {
      feeds = { mel_spectrogram: sampleInput(batch) };
    } catch (error) {
      throw new Error(`cannot allocate the batch-${batch} input (${batch * 3 * 128 * 32 * 4} bytes): ${(error as Error).message}`);
    }
    const warmup = await warmUp(sessions, feeds);
    const [candidateTimings, holderTimings] = await timed(sessions, feeds);
    post({ kind: 'batch', batch, warmup, candidate: candidateTimings!, ...(holderTimings ? { holder: holderTimings } : {}) });
  }
  await Promise.all(sessions.map((s) => s.release()));
  post({ kind: 'done' });
} catch (error) {
  post({ kind: 'error', message: (error as Error).message, code: (error as { code?: string }).code ?? ErrorCodes.BENCHMARK_FAILED });
}

/**
 * The holder's session, or none (and a warning) when it will not load here: it passed every stage
 * once, so this is the machine or a runtime that changed since, never the candidate's fault, and
 * failing the candidate would fail every run until the alias moves by hand.
 */
async function openHolder(path: string, options: Parameters<typeof openSession>[1], warnings: string[]): Promise<ort.InferenceSession | undefined> {
  try {
    return (await openSession(path, options)).session;
  } catch (error) {
    warnings.push(`no latency baseline: the alias holder's model does not load here (${(error as Error).message.split('\n')[0]})`);
    return undefined;
  }
}
