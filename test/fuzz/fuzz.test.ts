import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/temp.ts';
import { describeFailure, formatStats, FuzzWorker, listRegressions, regressionName, replayRegression, fuzzTarget } from './harness.ts';
import type { Seed } from './mutations.ts';
import { TARGETS } from './targets.ts';

/**
 * The short fuzzing run of `npm test`: about 40 s of mutated inputs over every target, from a fixed
 * fast-check seed (FUZZ_SEED to change it, FUZZ_SECONDS for the total time), then every input kept
 * in test/fuzz/regressions/. The long run is `npm run fuzz -- --minutes N` (run.ts).
 */

const SEED = Number(process.env.FUZZ_SEED ?? 0x4e1d);
const TOTAL_MS = Number(process.env.FUZZ_SECONDS ?? 40) * 1000;
const PER_TARGET_MS = TOTAL_MS / TARGETS.length;

let dir: string;
let worker: FuzzWorker;
const seeds = new Map<string, Seed[]>();

beforeAll(async () => {
  dir = await tempDir('heimdall-fuzz-');
  worker = new FuzzWorker(dir);
  for (const target of TARGETS) seeds.set(target.name, await target.seeds(dir));
  await worker.warm();
  console.log(`fuzz: seed ${SEED}, ${(PER_TARGET_MS / 1000).toFixed(1)} s per target; reproduce with FUZZ_SEED=${SEED} npx vitest run test/fuzz/fuzz.test.ts`);
});

afterAll(async () => {
  await worker?.close();
});

describe('fuzzing (mutated seeds): only typed, non-retriable errors, within 2 s and 256 MB per input', () => {
  for (const target of TARGETS) {
    it(`${target.name}: ${target.description}`, async () => {
      const stats = await fuzzTarget({
        target,
        seeds: seeds.get(target.name)!,
        worker,
        seed: SEED,
        budgetMs: PER_TARGET_MS,
        minimize: { maxRuns: 30, maxMs: 3_000 },
      });
      console.log(formatStats(stats));
      const report = stats.failures.map(describeFailure).join('\n');
      if (report) console.log(report);
      expect(stats.inputs).toBeGreaterThan(seeds.get(target.name)!.length);
      expect(stats.harnessError).toBeUndefined();
      // The long runner's first slice of a single target replays this very sequence, and keeps what fails.
      const keep = `keep them as regression inputs with: npm run fuzz -- --target ${target.name} --seed ${SEED} --minutes 1`;
      expect(stats.failures.map((f) => `${f.verdict.kind}: ${f.verdict.summary}`), `fuzz seed ${SEED} (${keep}):\n${report}`).toEqual([]);
    });
  }
});

describe('fuzz regressions (test/fuzz/regressions/<target>/*.bin)', () => {
  const files = listRegressions();
  for (const file of files) {
    it(`${regressionName(file)}${file.info?.summary ? ` (was ${file.info.kind}: ${file.info.summary.slice(0, 100)})` : ''}`, async () => {
      const { verdict } = await replayRegression(worker, file);
      expect(verdict?.summary).toBeUndefined();
    });
  }
});
