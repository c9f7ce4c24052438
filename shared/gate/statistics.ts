import type { LatencyStats } from '../events/schemas.ts';

/**
 * The benchmark's statistics (DESIGN §5), pure functions of timings in milliseconds. Nothing here
 * assumes a distribution: latencies are skewed and multi-modal, so every interval comes from order
 * statistics, whose coverage only needs the samples to be independent draws of one distribution.
 */

/** Confidence of the intervals we report (p50, ratio). */
export const CONFIDENCE = 0.95;

/** A sorted copy: every statistic here reads order statistics. */
export const ascending = (values: readonly number[]): number[] => [...values].sort((a, b) => a - b);

/** Nearest-rank percentile (q in (0, 1]) of ascending values: the smallest value with at least q of the sample at or below it. */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) throw new RangeError('a percentile of no samples');
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length))) - 1]!;
}

/**
 * 1-based ranks [l, n + 1 - l] of the order statistics bounding the median with at least the given
 * confidence: the largest l with P(Binomial(n, 1/2) <= l - 1) <= (1 - confidence) / 2 (the sign-test
 * interval: each sample falls below the true median with probability 1/2, whatever the
 * distribution). Undefined when n is too small for any (below 6 samples at 95 %).
 */
export function medianRanks(n: number, confidence = CONFIDENCE): [number, number] | undefined {
  const tail = (1 - confidence) / 2;
  // One pass over the binomial's lower tail, each term from log-probabilities: a large n
  // underflows only the first terms, too small to matter, never the sum.
  const logHalfPowerN = n * Math.log(0.5);
  let logChoose = 0;
  let cdf = 0;
  let lower = 0;
  while (lower < Math.floor(n / 2)) {
    cdf += Math.exp(logChoose + logHalfPowerN);
    if (cdf > tail) break;
    lower++;
    logChoose += Math.log(n - lower + 1) - Math.log(lower);
  }
  return lower === 0 ? undefined : [lower, n + 1 - lower];
}

/** Timed runs needed before the median has an interval at `confidence`: the benchmark never times fewer. */
export function minSamplesForInterval(confidence = CONFIDENCE): number {
  let n = 1;
  while (!medianRanks(n, confidence)) n++;
  return n;
}

/** The median of ascending values with its distribution-free interval (RangeError below minSamplesForInterval). */
export function medianWithInterval(sorted: readonly number[], confidence = CONFIDENCE): { median: number; interval: [number, number] } {
  const ranks = medianRanks(sorted.length, confidence);
  if (!ranks) throw new RangeError(`${sorted.length} samples give the median no ${confidence * 100} % interval (need ${minSamplesForInterval(confidence)})`);
  return { median: percentile(sorted, 0.5), interval: [sorted[ranks[0] - 1]!, sorted[ranks[1] - 1]!] };
}

/**
 * When a tail percentile is reported: MLPerf LoadGen's early-stopping rule (loadgen/early_stopping.cc,
 * results.cc), which asks for the smallest n such that, with one sample allowed above the estimate,
 * the estimate still bounds the true percentile at 99 % confidence: P(Binomial(n, 1 - q) <= 1) <= 0.01.
 * That is 64 samples for p90 and 662 for p99, LoadGen's own minimums. Below it, the largest few
 * samples would *be* the percentile (p90 = p99 = the maximum of 7 runs), so we leave it out rather
 * than print a number that only looks like one. perf_analyzer reports any percentile of whatever it
 * collected and leaves the judgement to the reader; a gate cannot.
 */
export function minSamplesForPercentile(q: number): number {
  const over = 1 - q;
  let n = 2;
  // P(X <= 1) = q^n + n (1 - q) q^(n - 1), closed form: no loop inside the loop.
  while (q ** n + n * over * q ** (n - 1) > 0.01) n++;
  return n;
}

const MIN_FOR_P90 = minSamplesForPercentile(0.9);
const MIN_FOR_P99 = minSamplesForPercentile(0.99);

/** Per-batch figures of timed runs: n, p50 with its interval, p90/p99 where n supports them, mean, throughput. */
export function latencyStats(batch: number, timings: readonly number[]): LatencyStats {
  const sorted = ascending(timings);
  const { median, interval } = medianWithInterval(sorted);
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return {
    batch,
    n: sorted.length,
    p50: median,
    p50Interval: interval,
    ...(sorted.length >= MIN_FOR_P90 ? { p90: percentile(sorted, 0.9) } : {}),
    ...(sorted.length >= MIN_FOR_P99 ? { p99: percentile(sorted, 0.99) } : {}),
    mean,
    throughput: (batch * 1000) / mean,
  };
}

/**
 * Candidate/holder latency from interleaved runs: the median of the per-round ratios with its
 * order-statistic interval. Pairing is the point: a round times both models back to back on the
 * same input, so whatever slows the machine for a moment (another tenant, frequency scaling, a GC)
 * slows both and cancels in their ratio, while a ratio of two separately taken medians carries
 * both medians' noise and any drift between them. The median of ratios is scale-free (the same
 * model against itself centres on 1) and needs no distribution, like the p50 interval. What pairing
 * cannot cancel is a difference between the two sessions themselves: each has an intra-op thread
 * pool of its own, and with more than one thread on a busy machine the scheduler may crowd one pool
 * for a while; a budget of seconds averages that out (test/integration/gate-statistics.test.ts has
 * the figures).
 */
export function pairedRatio(candidate: readonly number[], holder: readonly number[], confidence = CONFIDENCE): { ratio: number; interval: [number, number]; n: number } {
  if (candidate.length !== holder.length) throw new RangeError(`${candidate.length} candidate timings against ${holder.length} of the holder: runs are paired`);
  const { median, interval } = medianWithInterval(
    ascending(candidate.map((c, i) => c / holder[i]!)),
    confidence,
  );
  return { ratio: median, interval, n: candidate.length };
}

/**
 * The gate's latency rule (DESIGN §3 The gate): the candidate is slower only when the whole
 * interval of its ratio to the holder lies past 1 + threshold: a model no slower than that is
 * called a regression at most 2.5 % of the time (the interval's one-sided miss rate), a model
 * clearly slower as soon as the runs resolve the difference.
 */
export function isRegression(ratioInterval: readonly [number, number], threshold: number): boolean {
  return ratioInterval[0] > 1 + threshold;
}

/**
 * When warm-up is over, after perf_analyzer's stability rule (`--stability-percentage`, default 10:
 * a measurement is stable when max/min of the last 3 measurements is within 10 %): the last
 * `windows` windows of `window` runs each have medians within `tolerance` of each other. Medians,
 * not perf_analyzer's means, so one descheduled run on a shared machine does not restart the wait.
 * The caller bounds the wait (the benchmark: as long as the timed budget) because some machines
 * never settle, and says so when it stopped unsettled.
 */
export const SETTLE_RULE = { window: 5, windows: 3, tolerance: 0.1 } as const;

export function isSettled(timings: readonly number[]): boolean {
  const { window, windows, tolerance } = SETTLE_RULE;
  if (timings.length < window * windows) return false;
  const recent = timings.slice(-window * windows);
  const medians = Array.from({ length: windows }, (_, w) => percentile(ascending(recent.slice(w * window, (w + 1) * window)), 0.5));
  return Math.max(...medians) <= Math.min(...medians) * (1 + tolerance);
}
