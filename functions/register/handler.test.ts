/**
 * The register stage on a real S3-protocol server (moto) and the local registry: it always
 * registers, the gate decides whether the alias moves, the registered event says what happened and
 * implies the promotion, and the report it stores can be read back through the store.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import type { AnyCloudEvent, CloudEvent, EventData } from '../../shared/events/index.ts';
import { createEvent } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { executeStage, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import { followUps } from '../../shared/pipeline/follow-ups.ts';
import { ingestLocalFile } from '../../shared/pipeline/local-ingest.ts';
import { LocalModelRegistry } from '../../shared/registry/local.ts';
import { GATE_TAG, ONNX_URI_TAG, PIPELINE_RUN_TAG } from '../../shared/registry/model-registry.ts';
import { S3ObjectStore } from '../../shared/storage/s3.ts';
import { MODELS_BUCKET, reportKey } from '../../shared/storage/object-store.ts';
import { benchmarkedEvent, latency } from '../../test/support/events.ts';
import { startS3Server, type S3Server } from '../../test/support/services/s3-server.ts';
import { writeSmallCheckpoint } from '../../test/support/small-model.ts';
import { tempDir } from '../../test/support/temp.ts';
import { stageFunctions } from '../index.ts';

const NAME = 'heimdall-localization';
const dir = await tempDir('heimdall-register-');
let s3: S3Server;
let store: S3ObjectStore;
let registry: LocalModelRegistry;

const stage = (name: string) => stageFunctions.find((s) => s.name === name)!;

/** The stage environment with a gate configured by HEIMDALL_GATE_* variables. */
function environment(env: Record<string, string> = {}): StageEnvironment {
  return { store, registry, config: loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data'), ...env }), logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
}

/** A real exported model (seed -> distinct bytes), and a benchmarked event about it with chosen figures and lineage. */
async function benchmarked(seed: number, options: { valLoss?: number; baseline?: EventData<'heimdall.model.benchmarked'>['baseline'] } = {}): Promise<CloudEvent<'heimdall.model.benchmarked'>> {
  const checkpoint = join(dir, `small-${seed}.pth`);
  await writeSmallCheckpoint(checkpoint, { seed });
  const exported = (await executeStage(stage('export'), await ingestLocalFile(checkpoint, store, () => undefined), environment())) as CloudEvent<'heimdall.model.exported'>;
  expect(exported.type).toBe('heimdall.model.exported');
  const { runId, checkpoint: ref, onnx } = exported.data;
  const metrics: Record<string, number> = options.valLoss === undefined ? {} : { val_loss: options.valLoss };
  const training = { epoch: 12, metrics, hyperParameters: { lr: 0.001 }, mlflowRunId: `train-${seed}` };
  return createEvent('heimdall.model.benchmarked', {
    stage: 'benchmark',
    source: 'heimdall/benchmark',
    data: {
      runId,
      checkpoint: ref,
      onnx,
      training,
      provider: 'cpu',
      threads: 1,
      sessionCreateMs: 3,
      perBatch: [latency(1, 2.5)],
      ...(options.baseline ? { baseline: options.baseline } : {}),
      parity: { reference: 'reference-impl', samples: 4, perOutput: { positions: { maxAbs: 6e-8, meanAbs: 1e-8 } }, tolerance: 1e-5, passed: true },
      warnings: [],
    },
  });
}

async function register(event: AnyCloudEvent, env: Record<string, string> = {}): Promise<CloudEvent<'heimdall.model.registered'>> {
  const result = await executeStage(stage('register'), event, environment(env));
  if (result.type !== 'heimdall.model.registered') throw new Error(`register failed: ${JSON.stringify(result.data)}`);
  return result;
}

const holderOf = async () => (await registry.getVersionByAlias(NAME, 'staging'))?.version;

beforeAll(async () => {
  s3 = await startS3Server();
  store = new S3ObjectStore(s3);
  registry = new LocalModelRegistry(join(dir, 'data'));
  await mkdir(join(dir, 'scratch'), { recursive: true });
}, 90_000);
afterAll(async () => {
  await s3?.stop();
});

describe('register', () => {
  let first: CloudEvent<'heimdall.model.benchmarked'>;

  it('registers the first model of its name and moves the alias to it, with its lineage, gate and run on the version', async () => {
    first = await benchmarked(1, { valLoss: 0.31 });
    const registered = await register(first);
    const { runId, onnx } = first.data;
    expect(registered.data).toMatchObject({ runId, registry: { name: NAME, version: '1', created: true, modelUri: `models:/${NAME}/1` }, alias: { name: 'staging', moved: true } });
    expect(registered.data.alias.previous).toBeUndefined();
    expect(registered.data.gate).toEqual({
      passed: true,
      checks: [
        { name: 'latency', passed: true, value: null, limit: null, policy: 'block', detail: 'first model of its name: nothing to compare with' },
        { name: 'metric', passed: true, value: null, limit: null, policy: 'block', detail: 'first model of its name: nothing to compare with' },
      ],
    });
    expect(registered.data.training).toEqual(first.data.training);

    const version = (await registry.getVersion(NAME, '1'))!;
    expect(version.aliases).toEqual(['staging']);
    expect(version.tags).toMatchObject({ sha256: onnx.sha256, [PIPELINE_RUN_TAG]: runId, [ONNX_URI_TAG]: onnx.uri, 'training.val_loss': '0.31', 'training.epoch': '12', training_run_id: 'train-1' });
    expect(JSON.parse(version.tags[GATE_TAG]!)).toEqual(registered.data.gate);
    const stored = JSON.parse(await readFile(join(dir, 'data', 'registry', 'registry.json'), 'utf8')).models[NAME].versions[0];
    expect(stored.params).toMatchObject({ lr: '0.001', opset: '14' });
    expect(stored.metrics).toMatchObject({ 'training.val_loss': 0.31, 'training.epoch': 12, latency_p50_batch1_ms: 2.5, latency_n_batch1: 1000 });
    expect((await registry.aliasHistory(NAME)).staging).toMatchObject([{ version: '1', reason: 'gate passed', actor: 'heimdall/register' }]);
    expect(followUps(registered)).toMatchObject([{ type: 'heimdall.model.promoted', id: `${runId}.promoted.staging`, data: { runId, name: NAME, version: '1', alias: 'staging', reason: 'gate passed', actor: 'heimdall/register' } }]);
  });

  it('stores a report the store reads back, with the gate and the lineage, and the model sha256 under its own key', async () => {
    const { runId, onnx } = first.data;
    const info = await store.stat(MODELS_BUCKET, reportKey(runId));
    expect(info?.metadata).toMatchObject({ 'run-id': runId, 'model-sha256': onnx.sha256 });
    expect(info?.metadata.sha256).toBeUndefined();
    const fetched = await store.fetchFile(MODELS_BUCKET, reportKey(runId));
    try {
      const report = JSON.parse(await readFile(fetched.path, 'utf8'));
      expect(report).toMatchObject({ runId, onnx: { sha256: onnx.sha256 }, training: { metrics: { val_loss: 0.31 } }, gate: { passed: true } });
    } finally {
      await fetched.release();
    }
  });

  it('a redelivery registers nothing new, moves nothing, and reports the same move (and so the same promotion)', async () => {
    const before = await register(first);
    const again = await register(first);
    expect(again.data.registry).toMatchObject({ version: '1', created: false });
    expect(again.data.alias).toEqual(before.data.alias);
    expect(again.data.gate).toEqual(before.data.gate);
    expect(followUps(again).map((e) => e.id)).toEqual([`${first.data.runId}.promoted.staging`]);
    expect((await registry.aliasHistory(NAME)).staging).toHaveLength(1);
  });

  it('holds back a model whose val_loss is worse than the holder: registered, the alias left on the holder, no promotion', async () => {
    const registered = await register(await benchmarked(2, { valLoss: 0.42 }));
    expect(registered.data.registry).toMatchObject({ version: '2', created: true });
    expect(registered.data.alias).toEqual({ name: 'staging', moved: false, previous: '1' });
    expect(registered.data.gate.passed).toBe(false);
    expect(registered.data.gate.checks.find((c) => c.name === 'metric')).toEqual({ name: 'metric', passed: false, value: 0.42, limit: 0.31, policy: 'block', detail: "val_loss 0.42 > v1's 0.31 + tolerance 0" });
    expect(await holderOf()).toBe('1');
    expect(followUps(registered)).toEqual([]);
    expect(JSON.parse((await registry.getVersion(NAME, '2'))!.tags[GATE_TAG]!)).toMatchObject({ passed: false });
  });

  it('with HEIMDALL_GATE_METRIC_POLICY=warn, moves the alias to the worse model and says the check failed', async () => {
    const registered = await register(await benchmarked(3, { valLoss: 0.42 }), { HEIMDALL_GATE_METRIC_POLICY: 'warn' });
    expect(registered.data.alias).toEqual({ name: 'staging', moved: true, previous: '1' });
    expect(registered.data.gate).toMatchObject({ passed: true, checks: [{ name: 'latency', passed: true }, { name: 'metric', passed: false, policy: 'warn' }] });
    expect(await holderOf()).toBe('3');
    expect(followUps(registered)).toMatchObject([{ data: { version: '3', previous: '1' } }]);
  });

  it('holds back a model the benchmark found slower than the holder', async () => {
    const holder = (await registry.getVersion(NAME, '3'))!;
    const slower = benchmarkedEvent('0123456789abcdef', [latency(1, 3.3)], { version: holder.version, p50: 2.5, threshold: 0.1, ratioInterval: [1.27, 1.36] }).data.baseline;
    const registered = await register(await benchmarked(4, { valLoss: 0.4, baseline: slower }));
    expect(registered.data.gate).toMatchObject({ passed: false, checks: [{ name: 'latency', passed: false, value: 1.27, limit: 1.1, detail: '1.32x [1.27, 1.36] of v3 > 1.10' }, { name: 'metric', passed: true }] });
    expect(registered.data.alias).toEqual({ name: 'staging', moved: false, previous: '3' });
    expect(await holderOf()).toBe('3');
  });

  it('never repeats its move: a redelivery after a rollback leaves the alias where the rollback put it', async () => {
    const moved = await benchmarked(5, { valLoss: 0.1 });
    const registered = await register(moved);
    expect(registered.data.alias).toEqual({ name: 'staging', moved: true, previous: '3' });
    await registry.setAlias(NAME, 'staging', '3', { reason: 'rollback', actor: 'test' });
    const redelivered = await register(moved);
    expect(redelivered.data.alias).toEqual({ name: 'staging', moved: false, previous: '3' });
    expect(followUps(redelivered)).toEqual([]);
    expect(await holderOf()).toBe('3');
    expect((await registry.aliasHistory(NAME)).staging!.map((c) => [c.version, c.reason])).toEqual([
      ['1', 'gate passed'],
      ['3', 'gate passed'],
      ['5', 'gate passed'],
      ['3', 'rollback'],
    ]);
  });

  it('registers each benchmarked variant as <name>-<variant> with its own gate and alias, announces its move, and reports a held-back one with the reason', async () => {
    const event = await benchmarked(20, { valLoss: 0.05 });
    const standIn = (await benchmarked(21)).data.onnx;
    const speedup = [{ batch: 1, ratio: 0.6, ratioInterval: [0.58, 0.63] as [number, number] }];
    const withVariants = {
      ...event,
      data: {
        ...event.data,
        variants: [{ name: 'int8' as const, onnx: standIn, perBatch: [latency(1, 1.5)], speedup, perOutput: { positions: { maxAbs: 3e-3, meanAbs: 1e-3 } }, tolerance: 5e-2 }],
        skippedVariants: [{ name: 'int8' as const, stage: 'parity' as const, reason: 'positions max |diff| 2.00e-1 exceeds its tolerance 0.05' }],
      },
    };
    const registered = await register(withVariants);
    const fp32Version = registered.data.registry.version;
    const [variant, skipped] = registered.data.variants!;
    expect(variant).toMatchObject({ name: 'int8', registered: true, registry: { name: `${NAME}-int8`, version: '1', created: true }, alias: { name: 'staging', moved: true } });
    expect(variant!.gate!.checks.find((c) => c.name === 'accuracy')).toEqual({ name: 'accuracy', passed: true, value: 3e-3, limit: 5e-2, policy: 'block', detail: 'max |diff| 3.00e-3 against the fp32 model <= tolerance 0.05' });
    expect(skipped).toEqual({ name: 'int8', registered: false, reason: 'held back at parity: positions max |diff| 2.00e-1 exceeds its tolerance 0.05' });
    const version = (await registry.getVersion(`${NAME}-int8`, '1'))!;
    expect(version.tags).toMatchObject({ sha256: standIn.sha256, variant: 'int8', variant_of: fp32Version, [ONNX_URI_TAG]: standIn.uri, 'training.val_loss': '0.05', speedup_batch1: '0.600' });
    const ids = followUps(registered).map((e) => e.id);
    expect(ids).toContain(`${event.data.runId}.promoted.int8.staging`);
    expect(new Set(ids).size).toBe(ids.length);

    // Redelivered: nothing new, the same moves reported.
    const again = await register(withVariants);
    expect(again.data.variants![0]).toMatchObject({ registry: { version: '1', created: false }, alias: { moved: true } });
    expect(followUps(again).map((e) => e.id)).toEqual(ids);
    expect((await registry.aliasHistory(`${NAME}-int8`)).staging).toHaveLength(1);
  });

  it('reports a variant whose file is gone as not registered, and still registers the fp32 model', async () => {
    const event = await benchmarked(22);
    const standIn = (await benchmarked(23)).data.onnx;
    const gone = { ...standIn, uri: standIn.uri.replace(/model\.onnx$/, 'gone.onnx') };
    const variants = [{ name: 'int8' as const, onnx: gone, perBatch: [latency(1, 1.5)], speedup: [{ batch: 1, ratio: 0.6, ratioInterval: [0.58, 0.63] as [number, number] }], perOutput: { positions: { maxAbs: 3e-3, meanAbs: 1e-3 } }, tolerance: 5e-2 }];
    const registered = await register({ ...event, data: { ...event.data, variants } });
    expect(registered.type).toBe('heimdall.model.registered');
    expect(registered.data.registry.created).toBe(true);
    expect(registered.data.variants).toEqual([{ name: 'int8', registered: false, reason: expect.stringMatching(/^not registered as heimdall-localization-int8: OBJECT_NOT_FOUND: /) }]);
  });
});
