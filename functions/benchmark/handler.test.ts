/**
 * The benchmark stage on the embedded default (local folder as bucket, local registry): figures
 * with their sample counts and intervals, and the alias holder fetched from the store and timed
 * beside the candidate, or left out when it is the same model or its file is gone.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import type { AnyCloudEvent, CloudEvent, OnnxArtifact } from '../../shared/events/index.ts';
import { minSamplesForInterval } from '../../shared/gate/statistics.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { executeStage, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import { ingestLocalFile } from '../../shared/pipeline/local-ingest.ts';
import { ONNX_URI_TAG } from '../../shared/registry/model-registry.ts';
import { sha256File } from '../../shared/runtime/sha256.ts';
import { fetchUri, MODELS_BUCKET, modelKey } from '../../shared/storage/object-store.ts';
import { writeSmallCheckpoint } from '../../test/support/small-model.ts';
import { tempDir } from '../../test/support/temp.ts';
import { stageFunctions } from '../index.ts';

const dir = await tempDir('heimdall-benchmark-');
let environment: StageEnvironment;
let parityChecked: CloudEvent<'heimdall.model.parity-checked'>;
let other: OnnxArtifact;

const stage = (name: string) => stageFunctions.find((s) => s.name === name)!;
const training = { epoch: 7, step: 700, metrics: { val_loss: 0.21 }, hyperParameters: { lr: 0.001 } };

/** A model exported from a small checkpoint of this seed, in the store. */
async function exported(seed: number): Promise<CloudEvent<'heimdall.model.exported'>> {
  const path = join(dir, `seed-${seed}.pth`);
  await writeSmallCheckpoint(path, { seed });
  const created = await ingestLocalFile(path, environment.store, () => undefined);
  return (await executeStage(stage('export'), created, environment)) as CloudEvent<'heimdall.model.exported'>;
}

/** Registers `onnx` under `name` as the pipeline would, and points the alias at it. */
async function holdAlias(name: string, onnx: OnnxArtifact, uri = onnx.uri): Promise<string> {
  const file = await fetchUri(environment.store, onnx.uri);
  try {
    const { version } = await environment.registry.register({
      name,
      sha256: onnx.sha256,
      pipelineRunId: onnx.sha256.slice(0, 16),
      modelPath: file.path,
      modelUri: uri,
      tags: { [ONNX_URI_TAG]: uri },
      params: {},
      metrics: {},
      report: {},
    });
    await environment.registry.setAlias(name, environment.config.alias, version.version, { reason: 'manual', actor: 'test' });
    return version.version;
  } finally {
    await file.release();
  }
}

/** The benchmark stage on the candidate, with this model name and batch sizes (and budget); its result and progress lines. */
async function benchmark(modelName: string, batches = '2,4', budgetMs = '40'): Promise<{ event: AnyCloudEvent; progress: string[] }> {
  // One thread: both models on the same one, so a 40 ms budget on a busy machine still compares like with like (test/integration/gate-statistics.test.ts).
  const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data'), HEIMDALL_MODEL_NAME: modelName, HEIMDALL_BENCHMARK_BATCHES: batches, HEIMDALL_BENCHMARK_BUDGET_MS: budgetMs, HEIMDALL_BENCHMARK_WARMUP: '1', HEIMDALL_BENCHMARK_THREADS: '1' });
  const progress: string[] = [];
  const event = await executeStage(stage('benchmark'), parityChecked, { ...environment, config }, { progress: (line) => progress.push(line) });
  return { event, progress };
}

beforeAll(async () => {
  const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data') });
  await mkdir(join(dir, 'scratch'), { recursive: true });
  environment = { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
  let event: AnyCloudEvent = await exported(5);
  for (const name of ['validate', 'parity'] as const) event = await executeStage(stage(name), event, environment);
  expect(event.type).toBe('heimdall.model.parity-checked');
  // What export found in the checkpoint travels to register.
  parityChecked = { ...event, data: { ...event.data, training } } as CloudEvent<'heimdall.model.parity-checked'>;
  other = (await exported(6)).data.onnx;
});

describe('benchmark', () => {
  it('reports per batch n, p50 inside its interval, mean and throughput, and carries the training lineage; no holder, no baseline', async () => {
    const { event, progress } = await benchmark('no-holder-yet');
    expect(event.type).toBe('heimdall.model.benchmarked');
    const data = (event as CloudEvent<'heimdall.model.benchmarked'>).data;
    expect(data.perBatch.map((s) => s.batch)).toEqual([2, 4]);
    for (const s of data.perBatch) {
      expect(s.n).toBeGreaterThanOrEqual(minSamplesForInterval());
      expect(s.p50Interval[0]).toBeLessThanOrEqual(s.p50);
      expect(s.p50).toBeLessThanOrEqual(s.p50Interval[1]);
      expect(s.throughput).toBeCloseTo((s.batch * 1000) / s.mean, 6);
    }
    expect(data.baseline).toBeUndefined();
    expect(data.training).toEqual(training);
    expect(progress.filter((l) => /^batch \d+: n \d+, p50 [\d.]+ ms \[[\d.]+ ms, [\d.]+ ms\], [\d.]+ samples\/s, after \d+ warm-up runs/.test(l))).toHaveLength(2);
  });

  it('says so when the warm-up time ran out before the timings settled', async () => {
    // A 1 ms budget bounds the warm-up to 1 ms: fewer runs than the settle rule's three windows of five.
    const { event, progress } = await benchmark('no-holder-yet', '2', '1');
    expect((event as CloudEvent<'heimdall.model.benchmarked'>).data.warnings).toEqual([expect.stringMatching(/^batch 2: timings had not settled after ([1-9]|1[0-4]) warm-up runs \(the warm-up time limit\)$/)]);
    expect(progress.at(-1)).toMatch(/after ([1-9]|1[0-4]) warm-up runs \(not settled\)$/);
  });

  it('times the alias holder interleaved with the candidate and reports the ratio at the smallest batch when batch 1 is not timed', async () => {
    const version = await holdAlias('other-holds', other);
    const { event, progress } = await benchmark('other-holds', '4,2');
    const { baseline, perBatch } = (event as CloudEvent<'heimdall.model.benchmarked'>).data;
    expect(baseline).toMatchObject({ version, sha256: other.sha256, threshold: 0.1 });
    expect(baseline!.perBatch.map((s) => [s.batch, s.n])).toEqual(perBatch.map((s) => [s.batch, s.n]));
    expect(baseline!.ratioInterval[0]).toBeLessThanOrEqual(baseline!.ratio);
    expect(baseline!.ratio).toBeLessThanOrEqual(baseline!.ratioInterval[1]);
    expect(baseline!.regression).toBe(baseline!.ratioInterval[0] > 1.1);
    // Same architecture, other weights: the same work, so the ratio is near 1.
    expect(baseline!.ratio).toBeGreaterThan(0.8);
    expect(baseline!.ratio).toBeLessThan(1.25);
    const batch2 = progress.find((l) => l.startsWith('batch 2:'))!;
    expect(batch2).toMatch(/; alias holder n \d+, p50 .*; ratio [\d.]+ \[[\d.]+, [\d.]+\]$/);
    expect(batch2).toContain(`ratio ${baseline!.ratio.toFixed(3)} [${baseline!.ratioInterval[0].toFixed(3)}, ${baseline!.ratioInterval[1].toFixed(3)}]`);
  });

  it('leaves the baseline out when the alias holder is the candidate itself', async () => {
    await holdAlias('self-holds', parityChecked.data.onnx);
    const { event } = await benchmark('self-holds');
    expect(event.type).toBe('heimdall.model.benchmarked');
    expect((event as CloudEvent<'heimdall.model.benchmarked'>).data.baseline).toBeUndefined();
  });

  it("benchmarks without a baseline when the holder's key holds another model now (its checkpoint exported again)", async () => {
    const replaced = await holdAlias('holder-replaced', other, parityChecked.data.onnx.uri);
    const { event } = await benchmark('holder-replaced');
    const data = (event as CloudEvent<'heimdall.model.benchmarked'>).data;
    expect(data.baseline).toBeUndefined();
    expect(data.warnings).toContain(`no latency baseline: ${parityChecked.data.onnx.uri} no longer holds the model of version ${replaced} (staging)`);
  });

  it("benchmarks without a baseline, and says why, when the holder's model does not load here", async () => {
    const garbage = join(dir, 'not-a-model.onnx');
    await writeFile(garbage, 'not an ONNX model');
    const sha256 = await sha256File(garbage);
    const key = modelKey('fedcba9876543210');
    await environment.store.putFile(MODELS_BUCKET, key, garbage, { sha256 });
    await holdAlias('holder-unloadable', { ...other, uri: environment.store.uri(MODELS_BUCKET, key), sha256 });
    const { event } = await benchmark('holder-unloadable');
    expect(event.type).toBe('heimdall.model.benchmarked');
    const data = (event as CloudEvent<'heimdall.model.benchmarked'>).data;
    expect(data.baseline).toBeUndefined();
    expect(data.warnings).toContainEqual(expect.stringMatching(/^no latency baseline: the alias holder's model does not load here \(/));
  });

  // A registry tag never fails the candidate's run: a holder that cannot be read means no baseline, said in a warning.
  for (const [why, uri, code] of [
    ["the holder's file is gone from the store", () => environment.store.uri(MODELS_BUCKET, modelKey('0123456789abcdef')), 'OBJECT_NOT_FOUND'],
    ['the holder was registered from another store (a uri this store cannot read)', () => 's3://another-bucket/models/localization/0123456789abcdef/model.onnx', 'INVALID_EVENT'],
  ] as const) {
    it(`benchmarks without a baseline, and says why, when ${why}`, async () => {
      const name = `holder-${code.toLowerCase()}`;
      const version = await holdAlias(name, other, uri());
      const { event } = await benchmark(name);
      expect(event.type).toBe('heimdall.model.benchmarked');
      const data = (event as CloudEvent<'heimdall.model.benchmarked'>).data;
      expect(data.baseline).toBeUndefined();
      expect(data.warnings).toContain(`no latency baseline: the model of version ${version} (staging) cannot be read from ${uri()} (${code})`);
    });
  }

  it('times each variant that passed parity in the same rounds: its figures, its speed-up over fp32 per batch, its baseline against its own alias holder', async () => {
    const errors = { positions: { maxAbs: 1e-3, meanAbs: 1e-4 }, uncertainties: { maxAbs: 2e-3, meanAbs: 2e-4 } };
    const withVariants = {
      ...parityChecked,
      data: {
        ...parityChecked.data,
        // Another model of the same architecture stands in for the variant: the same work, other bytes.
        variants: [{ name: 'int8' as const, onnx: other, perOutput: errors, tolerance: 5e-2, passed: true }],
        skippedVariants: [{ name: 'int8' as const, stage: 'validate' as const, reason: 'carried along' }],
      },
    };
    const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data'), HEIMDALL_MODEL_NAME: 'variants', HEIMDALL_BENCHMARK_BATCHES: '1,2', HEIMDALL_BENCHMARK_BUDGET_MS: '40', HEIMDALL_BENCHMARK_WARMUP: '1', HEIMDALL_BENCHMARK_THREADS: '1' });
    const run = async () => (await executeStage(stage('benchmark'), withVariants, { ...environment, config })) as CloudEvent<'heimdall.model.benchmarked'>;

    const first = await run();
    expect(first.type).toBe('heimdall.model.benchmarked');
    const [variant] = first.data.variants!;
    expect(variant).toMatchObject({ name: 'int8', onnx: other, perOutput: errors, tolerance: 5e-2 });
    expect(variant!.perBatch.map((s) => [s.batch, s.n])).toEqual(first.data.perBatch.map((s) => [s.batch, s.n]));
    expect(variant!.speedup.map((s) => s.batch)).toEqual([1, 2]);
    for (const s of variant!.speedup) {
      expect(s.ratioInterval[0]).toBeLessThanOrEqual(s.ratio);
      expect(s.ratio).toBeLessThanOrEqual(s.ratioInterval[1]);
      // The same work: near 1.
      expect(s.ratio).toBeGreaterThan(0.8);
      expect(s.ratio).toBeLessThan(1.25);
    }
    expect(variant!.baseline).toBeUndefined();
    expect(first.data.skippedVariants).toEqual(withVariants.data.skippedVariants);

    // Its own alias holder is the version holding `staging` under variants-int8, not the fp32 name's.
    const version = await holdAlias('variants-int8', parityChecked.data.onnx);
    const second = await run();
    expect(second.data.baseline).toBeUndefined();
    expect(second.data.variants![0]!.baseline).toMatchObject({ version, sha256: parityChecked.data.onnx.sha256, threshold: 0.1 });
    expect(second.data.variants![0]!.baseline!.perBatch.map((s) => s.batch)).toEqual([1, 2]);
  });

  it('times no variant that failed parity', async () => {
    const over = { ...parityChecked, data: { ...parityChecked.data, variants: [{ name: 'int8' as const, onnx: other, perOutput: { positions: { maxAbs: 1, meanAbs: 1 } }, tolerance: 5e-2, passed: false }] } };
    const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data'), HEIMDALL_MODEL_NAME: 'over', HEIMDALL_BENCHMARK_BATCHES: '2', HEIMDALL_BENCHMARK_BUDGET_MS: '10', HEIMDALL_BENCHMARK_WARMUP: '1', HEIMDALL_BENCHMARK_THREADS: '1' });
    const event = (await executeStage(stage('benchmark'), over, { ...environment, config })) as CloudEvent<'heimdall.model.benchmarked'>;
    expect(event.type).toBe('heimdall.model.benchmarked');
    expect(event.data.variants).toEqual([]);
  });
});
