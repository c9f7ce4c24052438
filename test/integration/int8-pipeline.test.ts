/**
 * The int8 variant through `heimdall run` (DESIGN §3 Variants), as a user runs it: with
 * HEIMDALL_VARIANTS=int8 on the tiny fixture (written by real torch) it is validated, checked
 * against the fp32 model, benchmarked beside it and registered as heimdall-localization-int8, on
 * the local registry and on a real MLflow server, where Python MLflow loads it and onnxruntime runs
 * it; over its tolerance it is not registered and the run says why; unconfigured, nothing changes.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODELS_BUCKET, modelKey } from '../../shared/storage/object-store.ts';
import { heimdallRun } from '../support/heimdall-cli.ts';
import { ensureFixtures } from '../support/oracle.ts';
import { MLFLOW_OFFLINE_ENV, startMlflowServer, type MlflowServer } from '../support/services/mlflow-server.ts';
import { runServicesPython } from '../support/services/venv.ts';
import { tempDir } from '../support/temp.ts';

const NAME = 'heimdall-localization';
const INT8 = `${NAME}-int8`;
let dir: string;
let checkpoint: string;

/** The local registry's record (registry.json) of a model name's versions. */
async function localVersions(workdir: string, name: string): Promise<Array<{ version: string; tags: Record<string, string>; metrics: Record<string, number> }>> {
  const registry = JSON.parse(await readFile(join(workdir, 'registry/registry.json'), 'utf8'));
  return registry.models[name]?.versions ?? [];
}

beforeAll(async () => {
  dir = await tempDir('heimdall-variant-pipeline-');
  checkpoint = (await ensureFixtures('tiny')).files.find((f) => f.name === 'full.pth')!.path;
});

describe('heimdall run with HEIMDALL_VARIANTS=int8', () => {
  it('registers the int8 variant as heimdall-localization-int8 beside the fp32 model, with its error, speed-up and gate', async () => {
    const workdir = join(dir, 'local');
    const { code, report, stdout } = await heimdallRun(checkpoint, workdir, { HEIMDALL_VARIANTS: 'int8' });
    expect(report.error).toBeUndefined();
    expect(code).toBe(0);
    expect(report.registry).toEqual({ name: NAME, version: '1', created: true });
    const [variant, ...others] = report.variants!;
    expect(others).toEqual([]);
    expect(variant).toMatchObject({ name: 'int8', parity: { tolerance: 1e-2, passed: true }, registered: { registered: true, registry: { name: INT8, version: '1', created: true }, alias: { name: 'staging', moved: true } } });
    // Smaller than the fp32 model: its MatMul weights are a quarter of the bytes.
    expect(variant!.onnx.bytes).toBeLessThan(report.onnx!.bytes / 2);
    for (const error of Object.values(variant!.parity!.perOutput)) expect(error.maxAbs).toBeLessThanOrEqual(1e-2);
    // Timed beside fp32 at every batch, the speed-up a paired ratio with its interval.
    expect(variant!.benchmark!.speedup.map((s) => s.batch)).toEqual([1, 8, 32]);
    for (const s of variant!.benchmark!.speedup) {
      expect(s.ratio).toBeGreaterThan(0);
      expect(s.ratioInterval[0]).toBeLessThanOrEqual(s.ratio);
      expect(s.ratioInterval[1]).toBeGreaterThanOrEqual(s.ratio);
    }
    expect(variant!.registered!.gate!.checks.map((c) => [c.name, c.passed])).toEqual([['latency', true], ['metric', true], ['accuracy', true]]);

    const [int8] = await localVersions(workdir, INT8);
    expect(int8!.tags).toMatchObject({ variant: 'int8', variant_of: '1', sha256: variant!.onnx.sha256, pipeline_run_id: report.runId, onnx_uri: variant!.onnx.uri });
    expect(int8!.metrics).toMatchObject({ model_bytes: variant!.onnx.bytes, speedup_batch1: variant!.benchmark!.speedup[0]!.ratio });
    expect(await localVersions(workdir, NAME)).toHaveLength(1);
    // The run ends at its last event: the variant's promotion, after the fp32 model's.
    expect(report.events.slice(-2).map((e) => e.id)).toEqual([`${report.runId}.promoted.staging`, `${report.runId}.promoted.int8.staging`]);
    // A line per variant where a user looks: the stages' lines, the promotion, the summary.
    expect(stdout).toContainEqual(expect.stringMatching(/ parity {4}int8 max \|diff\| \S+ <= 1e-2 vs fp32$/));
    expect(stdout).toContainEqual(expect.stringMatching(/ promote {3}int8 @staging -> v1, gate passed$/));
    expect(stdout).toContainEqual(expect.stringMatching(/^variant int8: registered heimdall-localization-int8 version 1 \(alias staging\), .* b1 x\d\.\d\d \[/));

    // The same checkpoint again: nothing new, for either model.
    const again = await heimdallRun(checkpoint, workdir, { HEIMDALL_VARIANTS: 'int8' });
    expect(again.code).toBe(0);
    expect(again.report.variants![0]!.registered).toMatchObject({ registered: true, registry: { name: INT8, version: '1', created: false }, alias: { moved: true } });
    expect(await localVersions(workdir, INT8)).toHaveLength(1);
  });

  it('does not register a variant over its tolerance, and the registered event says why with the figures', async () => {
    const workdir = join(dir, 'over-tolerance');
    const { code, report, stdout } = await heimdallRun(checkpoint, workdir, { HEIMDALL_VARIANTS: 'int8', HEIMDALL_INT8_TOLERANCE: '1e-9' });
    // Not a failed run: the fp32 model is registered as ever.
    expect(code).toBe(0);
    expect(report.registry).toEqual({ name: NAME, version: '1', created: true });
    const registered = report.events.find((e) => e.type === 'heimdall.model.registered')!.data as { variants: Array<{ name: string; registered: boolean; reason: string }> };
    expect(registered.variants).toEqual([
      { name: 'int8', registered: false, reason: expect.stringMatching(/^held back at parity: positions max \|diff\| \d\.\d\de-\d+, uncertainties max \|diff\| \S+ against the fp32 model on 4 samples exceeds its tolerance 1e-9$/) },
    ]);
    expect(report.variants![0]).toMatchObject({ parity: { passed: false, tolerance: 1e-9 } });
    expect(report.variants![0]!.benchmark).toBeUndefined();
    expect(await localVersions(workdir, INT8)).toEqual([]);
    expect(stdout).toContainEqual(expect.stringMatching(/^variant int8 not registered: held back at parity: /));
  });

  it('without HEIMDALL_VARIANTS, exports, reports and registers no variant', async () => {
    const workdir = join(dir, 'none');
    const { code, report, stdout } = await heimdallRun(checkpoint, workdir);
    expect(code).toBe(0);
    for (const event of report.events) {
      expect(event.data).not.toHaveProperty('variants');
      expect(event.data).not.toHaveProperty('skippedVariants');
    }
    expect(report).not.toHaveProperty('variants');
    expect(stdout.filter((line) => line.includes('int8'))).toEqual([]);
    expect(await localVersions(workdir, INT8)).toEqual([]);
  });
});

describe('heimdall run with HEIMDALL_VARIANTS=int8 on MLflow', () => {
  let mlflow: MlflowServer;
  beforeAll(async () => {
    mlflow = await startMlflowServer();
  }, 120_000);
  afterAll(async () => {
    await mlflow?.stop();
  });

  it('registers heimdall-localization-int8 so that Python MLflow loads it and onnxruntime runs it within its tolerance of fp32', async () => {
    const workdir = join(dir, 'mlflow');
    const { code, report } = await heimdallRun(checkpoint, workdir, { ...mlflow.env, ...MLFLOW_OFFLINE_ENV, HEIMDALL_VARIANTS: 'int8' });
    expect(report.error).toBeUndefined();
    expect(code).toBe(0);
    const variant = report.variants![0]!;
    expect(variant.registered).toMatchObject({ registered: true, registry: { name: INT8, version: '1', created: true }, alias: { name: 'staging', moved: true } });

    const batch = 2;
    const inputs = new Float32Array(batch * 3 * 128 * 32).map((_, i) => Math.sin(i * 0.37));
    const inputsFile = join(dir, 'mlflow-inputs.f32');
    await writeFile(inputsFile, Buffer.from(inputs.buffer));
    const loaded = JSON.parse(await runServicesPython('load_registered_model.py', [`models:/${INT8}@staging`, inputsFile, String(batch)], { ...mlflow.env, ...MLFLOW_OFFLINE_ENV })) as {
      onnx: Record<string, number[]>;
      sha256: string;
      flavors: string[];
      version: { version: string; tags: Record<string, string>; aliases: string[] };
    };
    expect(loaded.sha256).toBe(variant.onnx.sha256);
    expect(loaded.flavors).toEqual(['onnx', 'python_function']);
    expect(loaded.version).toMatchObject({ version: '1', aliases: ['staging'], tags: { variant: 'int8', variant_of: '1' } });

    // The fp32 model of the same run, with onnxruntime-node, on the same inputs.
    const fp32 = await ort.InferenceSession.create(join(workdir, 'buckets', MODELS_BUCKET, modelKey(report.runId)));
    const expected = await fp32.run({ mel_spectrogram: new ort.Tensor('float32', inputs, [batch, 3, 128, 32]) });
    await fp32.release();
    for (const name of ['positions', 'uncertainties']) {
      const reference = expected[name]!.data as Float32Array;
      const actual = loaded.onnx[name]!;
      expect(actual).toHaveLength(batch * 2);
      expect(Math.max(...actual.map((v, i) => Math.abs(v - reference[i]!)))).toBeLessThanOrEqual(variant.parity!.tolerance);
    }
  });
});
