/**
 * `heimdall run` end to end on the embedded default, as a user runs it: the real CLI, checkpoints
 * written by real torch, and every failure ending as a `pipeline.failed` event with nothing registered.
 */
import { execFileSync } from 'node:child_process';
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint, type LazyTensor } from '../../shared/checkpoint/index.ts';
import { pyDict, pyOrderedDict, tensor } from '../../shared/checkpoint/pickle-writer.ts';
import { writeTorchCheckpoint } from '../../shared/checkpoint/torch-writer.ts';
import { heimdallRun } from '../support/heimdall-cli.ts';
import { ensureFixtures, readSafetensorsF32 } from '../support/oracle.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

/** A first model's run: the six stages' events, then the gate's promotion of it to the alias. */
const RUN_EVENTS = [
  'heimdall.checkpoint.created',
  'heimdall.model.exported',
  'heimdall.model.validated',
  'heimdall.model.parity-checked',
  'heimdall.model.benchmarked',
  'heimdall.model.registered',
  'heimdall.model.promoted',
];
async function registryVersions(workdir: string): Promise<number> {
  const registry = JSON.parse(await readFile(join(workdir, 'registry/registry.json'), 'utf8').catch(() => '{"models":{}}'));
  return registry.models['heimdall-localization']?.versions.length ?? 0;
}

let dir: string;
beforeAll(async () => {
  dir = await tempDir('heimdall-pipeline-');
});

describe('heimdall run on checkpoints written by real torch', () => {
  for (const variant of ['tiny', 'base', 'large'] as const) {
    it(`takes ConvNeXt-${variant} through all six stages against the reference pass`, async () => {
      const fixtures = await ensureFixtures(variant);
      const workdir = join(dir, `run-${variant}`);
      const samples = variant === 'large' ? '1' : '4';
      const { code, report, stdout } = await heimdallRun(fixtures.files.find((f) => f.name === 'full.pth')!.path, workdir, { HEIMDALL_PARITY_SAMPLES: samples });
      expect(report.error).toBeUndefined();
      expect(code).toBe(0);
      expect(report.events.map((e) => e.type)).toEqual(RUN_EVENTS);
      expect(report.events.map((e) => e.id)).toEqual(['ingest', 'export', 'validate', 'parity', 'benchmark', 'register'].map((s) => `${report.runId}.${s}`).concat(`${report.runId}.promoted.staging`));
      expect(report.parity).toMatchObject({ reference: 'reference-impl', samples: Number(samples), passed: true, tolerance: 1e-5 });
      for (const error of Object.values(report.parity!.perOutput)) expect(error.maxAbs).toBeLessThanOrEqual(1e-5);
      expect(report.benchmark!.perBatch.map((s) => s.batch)).toEqual([1, 8, 32]);
      for (const s of report.benchmark!.perBatch) expect(s.p50).toBeGreaterThan(0);
      expect(report.registry).toEqual({ name: 'heimdall-localization', version: '1', created: true });
      expect(report.alias).toEqual({ name: 'staging', moved: true });
      expect(report.gate).toMatchObject({ passed: true });
      // Human output: one line per event, then the summary, then the JSON report.
      expect(stdout).toHaveLength(9);
      expect(stdout[7]).toMatch(/^registered heimdall-localization version 1 \(alias staging\)/);
    });
  }

  it('uses golden samples from a sidecar when the checkpoint has one', async () => {
    const fixtures = await ensureFixtures('tiny');
    const bare = fixtures.files.find((f) => f.name === 'bare.pt')!;
    const checkpoint = join(dir, 'sidecar', 'model.pt');
    await mkdir(join(dir, 'sidecar'), { recursive: true });
    await copyFile(bare.path, checkpoint);
    await copyFile(bare.golden, `${checkpoint}.parity.safetensors`);
    const { code, report } = await heimdallRun(checkpoint, join(dir, 'run-sidecar'));
    expect(code).toBe(0);
    expect(report.parity).toMatchObject({ reference: 'golden', samples: 16, passed: true });
  });

  it('uses golden samples carried inside the checkpoint (a parity entry)', async () => {
    const fixtures = await ensureFixtures('tiny');
    const bare = fixtures.files.find((f) => f.name === 'bare.pt')!;
    const source = await openCheckpoint(bare.path);
    const asTensor = async (t: LazyTensor) => tensor('float32', t.shape, await t.readFloat32());
    const weights = await Promise.all([...source.tensors].map(async ([name, t]) => [name, t.dtype === 'int64' ? tensor('int64', t.shape, BigInt64Array.of(0n)) : await asTensor(t)] as const));
    await source.close();
    const golden = readSafetensorsF32(bare.golden);
    const parity = pyDict(['inputs', 'positions', 'uncertainties'].map((k) => [k, tensor('float32', golden.get(k)!.shape, golden.get(k)!.data)] as const));
    const checkpoint = join(dir, 'with-parity.pth');
    await writeTorchCheckpoint(checkpoint, pyDict({ model_state_dict: pyOrderedDict(weights), parity }));
    const { code, report } = await heimdallRun(checkpoint, join(dir, 'run-parity-entry'));
    expect(report.error).toBeUndefined();
    expect(code).toBe(0);
    expect(report.parity).toMatchObject({ reference: 'golden', samples: 16, passed: true });
  });

  it('compares the benchmark with the version holding the alias, and falls back from CUDA to CPU with a warning', async () => {
    const workdir = join(dir, 'baseline');
    const [a, b] = [join(dir, 'baseline-a.pth'), join(dir, 'baseline-b.pth')];
    await writeSmallCheckpoint(a, { seed: 11 });
    await writeSmallCheckpoint(b, { seed: 12 });
    const first = await heimdallRun(a, workdir);
    expect(first.report.benchmark!.baseline).toBeUndefined();
    const second = await heimdallRun(b, workdir, { HEIMDALL_EXECUTION_PROVIDER: 'cuda', HEIMDALL_REGRESSION_THRESHOLD: '0' });
    expect(second.code).toBe(0);
    const { baseline, provider, warnings, perBatch } = second.report.benchmark!;
    expect(provider).toBe('cpu');
    expect(warnings).toContainEqual(expect.stringMatching(/^CUDA execution provider unavailable .*; ran on CPU$/));
    // The holder is timed again in the same worker, interleaved with the candidate: its figures are
    // this run's, not those it got when it was registered.
    expect(baseline).toMatchObject({ version: '1', sha256: first.report.onnx!.sha256, threshold: 0 });
    expect(baseline!.perBatch.map((s) => s.batch)).toEqual(perBatch.map((s) => s.batch));
    const [low, high] = baseline!.ratioInterval;
    expect(low).toBeLessThanOrEqual(baseline!.ratio);
    expect(high).toBeGreaterThanOrEqual(baseline!.ratio);
    expect(baseline!.regression).toBe(low > 1);
    expect(second.report.registry).toMatchObject({ version: '2', created: true });
  });

  it('registers the same checkpoint once, however often it runs', async () => {
    const fixtures = await ensureFixtures('tiny');
    const workdir = join(dir, 'twice');
    const checkpoint = fixtures.files.find((f) => f.name === 'lightning.ckpt')!.path;
    const first = await heimdallRun(checkpoint, workdir);
    const second = await heimdallRun(checkpoint, workdir);
    expect(first.report.registry).toMatchObject({ version: '1', created: true });
    expect(second.code).toBe(0);
    expect(second.report.registry).toMatchObject({ version: '1', created: false });
    expect(second.stdout.at(-2)).toMatch(/^already registered: heimdall-localization version 1/);
    expect(await registryVersions(workdir)).toBe(1);
  });
});

describe('heimdall run on bad input', () => {
  /** Every failure: a pipeline.failed event naming stage and code, exit 1, a one-line message, nothing registered. */
  async function expectFailure(checkpoint: string, stage: string, code: string, env: Record<string, string> = {}, workdir = join(dir, `bad-${stage}-${code}`)) {
    const result = await heimdallRun(checkpoint, workdir, env);
    expect(result.code).toBe(1);
    expect(result.report).toMatchObject({ status: 'failed', error: { stage, code } });
    expect(result.report.events.at(-1)).toMatchObject({ type: 'heimdall.pipeline.failed', data: { stage, error: { code } } });
    const errors = result.stderr.split('\n').filter((l) => l.startsWith('error: '));
    expect(errors).toEqual([expect.stringMatching(new RegExp(`^error: ${code}: run \\S+ failed at ${stage}: .+`))]);
    expect(await registryVersions(workdir)).toBe(0);
    return result.report;
  }

  let small: string;
  beforeAll(async () => {
    small = join(dir, 'small.pth');
    await writeSmallCheckpoint(small);
  });

  it('a checkpoint path that does not exist', async () => {
    await expectFailure(join(dir, 'missing.pth'), 'ingest', 'CHECKPOINT_NOT_FOUND');
  });

  it('an unreadable work dir', async () => {
    // A file where the data dir should be: unusable even for root, who ignores permission bits.
    const notADir = join(dir, 'not-a-dir');
    await copyFile(small, notADir);
    await expectFailure(small, 'ingest', 'IO_ERROR', {}, notADir);
  });

  it('a hostile pickle', async () => {
    const bad = join(dir, 'hostile');
    execFileSync('python3', [join(import.meta.dirname, '../fixtures/bad_checkpoints.py'), bad, join(bad, 'MARKER')]);
    const report = await expectFailure(join(bad, 'os_system.pt'), 'export', 'UNSAFE_PICKLE');
    expect(report.events.map((e) => e.type)).toEqual(['heimdall.checkpoint.created', 'heimdall.pipeline.failed']);
  });

  it('a model with NaN outputs', async () => {
    const nan = join(dir, 'nan.pth');
    await writeSmallCheckpoint(nan, { poisoned: 'backbone.0.0.0.bias' });
    const report = await expectFailure(nan, 'validate', 'INVALID_MODEL');
    expect(report.error!.message).toMatch(/non-finite values in positions/);
  });

  it('parity over tolerance', async () => {
    const report = await expectFailure(small, 'parity', 'PARITY_EXCEEDED', { HEIMDALL_PARITY_TOLERANCE: '1e-15' });
    expect(report.error!.message).toMatch(/max \|diff\| .* exceeds the tolerance 1e-15/);
  });

  it('a benchmark that cannot allocate', async () => {
    const report = await expectFailure(small, 'benchmark', 'BENCHMARK_FAILED', { HEIMDALL_BENCHMARK_BATCHES: '1,1000000' });
    expect(report.error!.message).toMatch(/cannot allocate the batch-1000000 input/);
  });
});
