import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ascending, isRegression, isSettled, latencyStats, medianRanks, medianWithInterval, minSamplesForInterval, minSamplesForPercentile, pairedRatio, percentile } from './statistics.ts';

/** P(Binomial(n, 1/2) <= k), exactly, in integers: the oracle medianRanks' floating-point sum is held to. */
function exactHalfBinomialCdf(k: number, n: number): number {
  let choose = 1n;
  let sum = 0n;
  for (let i = 0; i <= k; i++) {
    sum += choose;
    choose = (choose * BigInt(n - i)) / BigInt(i + 1);
  }
  // Scaled so the division keeps 15 significant digits.
  return Number((sum * 10n ** 15n) / 2n ** BigInt(n)) / 1e15;
}

/** A seeded generator (xorshift32), so the simulations below are the same on every run. */
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

/** Log-normal draws (median 1): skewed, like latencies. */
function logNormal(next: () => number): number {
  const z = Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  return Math.exp(z);
}

const positiveTimings = (minLength: number, maxLength = 300) => fc.array(fc.double({ min: 0.01, max: 1e4, noNaN: true }), { minLength, maxLength });

describe('percentile', () => {
  it('is the nearest rank: at least q of the sample at or below it, fewer than q strictly below', () => {
    fc.assert(
      fc.property(positiveTimings(1), fc.double({ min: 0.001, max: 1, noNaN: true }), (timings, q) => {
        const value = percentile(ascending(timings), q);
        expect(timings.filter((t) => t <= value).length).toBeGreaterThanOrEqual(q * timings.length - 1e-9);
        expect(timings.filter((t) => t < value).length).toBeLessThan(q * timings.length);
      }),
    );
  });
});

describe('the median interval', () => {
  it('has the largest ranks whose exact binomial coverage is still at least 95 %, for every n up to 300', () => {
    for (let n = 1; n <= 300; n++) {
      const ranks = medianRanks(n);
      if (n < 6) {
        // Even [min, max] covers only 1 - 2^(1-n) < 95 %.
        expect(ranks, `n = ${n}`).toBeUndefined();
        continue;
      }
      const [lower, upper] = ranks!;
      expect(upper, `n = ${n}`).toBe(n + 1 - lower);
      expect(1 - 2 * exactHalfBinomialCdf(lower - 1, n), `coverage at n = ${n}`).toBeGreaterThanOrEqual(0.95);
      expect(1 - 2 * exactHalfBinomialCdf(lower, n), `one rank narrower at n = ${n}`).toBeLessThan(0.95);
    }
  });

  it('matches the published table of sign-test intervals', () => {
    // Conover's and most textbooks' 95 % ranks for the median.
    expect(medianRanks(6)).toEqual([1, 6]);
    expect(medianRanks(10)).toEqual([2, 9]);
    expect(medianRanks(20)).toEqual([6, 15]);
    expect(medianRanks(100)).toEqual([40, 61]);
    expect(minSamplesForInterval()).toBe(6);
  });

  it('stays exact where 2^-n underflows (n = 50 000), agreeing with the normal approximation', () => {
    const n = 50_000;
    const [lower] = medianRanks(n)!;
    const normal = n / 2 - 1.959964 * Math.sqrt(n) / 2;
    expect(Math.abs(lower - normal)).toBeLessThan(2);
  });

  it('covers the true median of a skewed distribution at least 95 % of the time (2000 simulated benchmarks of 40 runs)', () => {
    const next = random(7);
    let covered = 0;
    const trials = 2000;
    for (let trial = 0; trial < trials; trial++) {
      const { interval } = medianWithInterval(ascending(Array.from({ length: 40 }, () => logNormal(next))));
      if (interval[0] <= 1 && 1 <= interval[1]) covered++;
    }
    // Exact coverage at n = 40 is 96.2 %; 3 standard errors of 2000 trials below 95 % is 93.5 %.
    expect(covered / trials).toBeGreaterThan(0.935);
  });

  it('refuses to give an interval it cannot give', () => {
    expect(() => medianWithInterval([1, 2, 3, 4, 5])).toThrow(/5 samples give the median no 95 % interval \(need 6\)/);
  });
});

describe('which tail percentiles are reported', () => {
  it("needs MLPerf LoadGen's early-stopping minimums: 64 samples for p90, 662 for p99", () => {
    // The counts LoadGen prints ("Processed at least 64 queries", "... 662 queries").
    expect(minSamplesForPercentile(0.9)).toBe(64);
    expect(minSamplesForPercentile(0.99)).toBe(662);
  });

  it('reports p90 and p99 only from those sample counts on, with n, the p50 interval, mean and throughput always', () => {
    const timings = (n: number) => Array.from({ length: n }, (_, i) => 10 + (i % 7));
    expect(latencyStats(8, timings(63))).not.toHaveProperty('p90');
    expect(latencyStats(8, timings(64)).p90).toBe(16);
    expect(latencyStats(8, timings(661))).not.toHaveProperty('p99');
    const stats = latencyStats(8, timings(662));
    expect(stats).toMatchObject({ batch: 8, n: 662, p50: 13, p90: 16, p99: 16 });
    expect(stats.p50Interval[0]).toBeLessThanOrEqual(13);
    expect(stats.p50Interval[1]).toBeGreaterThanOrEqual(13);
    expect(stats.throughput).toBeCloseTo((8 * 1000) / stats.mean, 9);
  });
});

describe('the paired ratio', () => {
  it('is exactly the factor when one model takes k times as long in every round, whatever the timings', () => {
    fc.assert(
      fc.property(positiveTimings(6), fc.double({ min: 0.1, max: 10, noNaN: true }), (holder, k) => {
        const { ratio, interval, n } = pairedRatio(
          holder.map((t) => t * k),
          holder,
        );
        expect(n).toBe(holder.length);
        expect(ratio).toBeCloseTo(k, 9);
        expect(interval[0]).toBeCloseTo(k, 9);
        expect(interval[1]).toBeCloseTo(k, 9);
      }),
    );
  });

  it('cancels drift that the medians of the two series do not: a machine slowing 3x during the runs', () => {
    const next = random(11);
    const rounds = 200;
    // Slowdown from 1x to 3x over the run; each timing has 5 % noise of its own.
    const drift = (i: number) => 1 + (2 * i) / rounds;
    const holder = Array.from({ length: rounds }, (_, i) => 10 * drift(i) * (1 + 0.05 * (next() - 0.5)));
    const candidate = Array.from({ length: rounds }, (_, i) => 12 * drift(i) * (1 + 0.05 * (next() - 0.5)));
    const paired = pairedRatio(candidate, holder);
    expect(paired.interval[0]).toBeLessThanOrEqual(1.2);
    expect(paired.interval[1]).toBeGreaterThanOrEqual(1.2);
    expect(paired.interval[1] - paired.interval[0]).toBeLessThan(0.02);
    // Comparing the two medians' intervals instead spans over ten times as much.
    const [c, h] = [medianWithInterval(ascending(candidate)), medianWithInterval(ascending(holder))];
    expect(c.interval[1] / h.interval[0] - c.interval[0] / h.interval[1]).toBeGreaterThan(10 * (paired.interval[1] - paired.interval[0]));
  });

  it('is a regression only when the whole interval lies past 1 + threshold', () => {
    expect(isRegression([1.1, 1.5], 0.1)).toBe(false);
    expect(isRegression([1.1001, 1.5], 0.1)).toBe(true);
    expect(isRegression([0.9, 3], 0)).toBe(false);
  });

  it('refuses series that are not paired', () => {
    expect(() => pairedRatio([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5])).toThrow(/paired/);
  });
});

describe('the warm-up rule', () => {
  const steady = (n: number, level = 10) => Array.from({ length: n }, (_, i) => level * (1 + 0.04 * Math.sin(i)));

  it('waits until the slow first runs have left the last 3 windows of 5', () => {
    const warmup = [80, 40, 20, 12, ...steady(11)];
    expect(isSettled(warmup)).toBe(false);
    expect(isSettled([...warmup, ...steady(4)])).toBe(true);
  });

  it('shrugs off one descheduled run per window, which a mean would not', () => {
    const timings = steady(15).map((t, i) => (i % 5 === 2 ? t * 20 : t));
    expect(isSettled(timings)).toBe(true);
  });

  it('is not settled while the level still moves by more than 10 % between windows', () => {
    expect(isSettled([...steady(5, 10), ...steady(5, 11.5), ...steady(5, 13)])).toBe(false);
    expect(isSettled(steady(14))).toBe(false);
  });
});
