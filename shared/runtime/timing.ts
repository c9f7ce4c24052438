// The benchmark's timing loop (DESIGN §5), run next to the sessions it times (model-host-process.ts).
import type * as ort from 'onnxruntime-node';
import { isSettled, minSamplesForInterval } from '../gate/statistics.ts';

export type Feeds = Record<string, ort.Tensor>;

/** How long the timing of one batch size runs: warm-up runs at least, then timed runs within a budget. */
export interface TimingSettings {
  /** Warm-up runs at least per batch size; more until the timings settle. */
  readonly warmup: number;
  /** Time for the timed runs of each batch size (every model timed together); warm-up may take as long again. */
  readonly budgetMs: number;
  /** Timed runs at least per batch size, even past the budget. */
  readonly minRuns: number;
}

export interface BatchTimings {
  readonly warmup: { readonly runs: number; readonly settled: boolean };
  /** Wall time of the warm-up and timed runs. */
  readonly measureMs: number;
  /** Per session, in the sessions' order, the timed runs' milliseconds. */
  readonly timings: number[][];
}

/** Warm-up until the timings settle, then timed rounds; with several sessions the rounds interleave them. */
export async function timeBatch(sessions: readonly ort.InferenceSession[], feeds: Feeds, settings: TimingSettings): Promise<BatchTimings> {
  const started = performance.now();
  const warmup = await warmUp(sessions, feeds, settings);
  const timings = await timed(sessions, feeds, settings);
  return { warmup, measureMs: performance.now() - started, timings };
}

async function timeRun(session: ort.InferenceSession, feeds: Feeds): Promise<number> {
  const started = performance.now();
  await session.run(feeds);
  return performance.now() - started;
}

/**
 * One round times every session once on the same input. The order is reversed every other round
 * and rotated every two (ABBA BAAB with two; ABCCBA BCAACB CABBAC with three), so whatever a run
 * leaves behind for the next (warm caches, threads still awake) favours no model, and each takes
 * every position equally often. Returns each session's timing in the sessions' order.
 */
export function roundOrder(count: number, index: number): number[] {
  const start = Math.floor(index / 2) % count;
  const order = Array.from({ length: count }, (_, i) => (start + i) % count);
  return index % 2 === 0 ? order : order.reverse();
}

async function round(sessions: readonly ort.InferenceSession[], feeds: Feeds, index: number): Promise<number[]> {
  const order = roundOrder(sessions.length, index);
  const timings = new Array<number>(sessions.length);
  for (const i of order) timings[i] = await timeRun(sessions[i]!, feeds);
  return timings;
}

/** Rounds until every session's timings settle (at least `warmup`), or until the budget's worth of time is spent. */
async function warmUp(sessions: readonly ort.InferenceSession[], feeds: Feeds, settings: TimingSettings): Promise<{ runs: number; settled: boolean }> {
  const series = sessions.map(() => [] as number[]);
  const started = performance.now();
  for (let runs = 0; ; runs++) {
    const settled = series.every((timings) => isSettled(timings));
    if (runs >= settings.warmup && (settled || performance.now() - started >= settings.budgetMs)) return { runs, settled };
    (await round(sessions, feeds, runs)).forEach((t, i) => series[i]!.push(t));
  }
}

/** Timed rounds until the budget is spent, but at least minRuns (and enough for a p50 interval). */
async function timed(sessions: readonly ort.InferenceSession[], feeds: Feeds, settings: TimingSettings): Promise<number[][]> {
  const minRounds = Math.max(settings.minRuns, minSamplesForInterval());
  const series = sessions.map(() => [] as number[]);
  const started = performance.now();
  for (let rounds = 0; rounds < minRounds || performance.now() - started < settings.budgetMs; rounds++) {
    (await round(sessions, feeds, rounds)).forEach((t, i) => series[i]!.push(t));
  }
  return series;
}
