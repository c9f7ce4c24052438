import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/temp.ts';
import { fuzzTarget, FuzzWorker, listRegressions, replayRegression, saveRegression, type Limits, type VerdictKind } from './harness.ts';
import { CANARY_TARGETS } from './targets.ts';

/** The harness finds planted bugs (targets.ts CANARY_TARGETS), minimizes them and keeps them as replayable fixtures. */

const LIMITS: Limits = { timeMs: 1_000, memoryBytes: 256 * 1024 * 1024, hangMs: 1_500 };
const EXPECTED: Record<string, VerdictKind> = { 'canary-untyped': 'untyped-error', 'canary-retriable': 'retriable-code', 'canary-hang': 'hang', 'canary-memory': 'memory' };

let dir: string;
let worker: FuzzWorker;
beforeAll(async () => {
  dir = await tempDir('heimdall-fuzz-self-');
  worker = new FuzzWorker(dir);
  await worker.warm();
});
afterAll(async () => {
  await worker?.close();
});

describe('fuzz harness', () => {
  for (const target of CANARY_TARGETS) {
    it(`finds ${EXPECTED[target.name]} in ${target.name} (${target.description}), minimized, kept and replayed`, async () => {
      const stats = await fuzzTarget({ target, seeds: await target.seeds(dir), worker, seed: 7, budgetMs: 3_000, maxInputs: 40, limits: LIMITS, minimize: { maxRuns: 10, maxMs: 4_000 } });
      expect(stats.failures.map((f) => f.verdict.kind)).toEqual([EXPECTED[target.name]]);
      const failure = stats.failures[0]!;
      if (failure.verdict.kind !== 'hang') expect(failure.recipe.mutations.length + failure.recipe.json.length).toBe(1);
      const root = join(dir, 'regressions');
      await saveRegression(failure, { seed: 7 }, root);
      const kept = listRegressions(root).filter((f) => f.target === target.name);
      expect(kept).toHaveLength(1);
      expect(kept[0]!.info?.kind).toBe(EXPECTED[target.name]);
      expect((await replayRegression(worker, kept[0]!, LIMITS)).verdict?.kind).toBe(EXPECTED[target.name]);
    });
  }
});
