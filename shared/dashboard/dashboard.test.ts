import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { HeimdallError } from '../errors/index.ts';
import { createEvent, type AnyCloudEvent, type GateVerdict, type LatencyStats } from '../events/index.ts';
import { promote } from '../gate/promotion.ts';
import { failureEvent } from '../pipeline/failure.ts';
import { FsRunStateStore } from '../pipeline/run-state/fs.ts';
import { applyEvent, type RunState } from '../pipeline/run-state/run-state.ts';
import { LocalModelRegistry } from '../registry/local.ts';
import { DEFAULT_MODEL_NAME, type ModelRegistry } from '../registry/model-registry.ts';
import { dashboardApp } from './app.ts';
import { logTicks } from './chart.ts';
import { gatherDashboard, modelAliases, registeredVersions, runView } from './data.ts';
import { startDashboard } from './index.ts';

const logger = pino({ level: 'silent' });
const MODEL = DEFAULT_MODEL_NAME;

/** A batch's figures as the benchmark reports them: p99 only when given (the sample count supports one). */
function latency(batch: number, p50: number, options: { n?: number; p99?: number } = {}): LatencyStats {
  return { batch, n: options.n ?? 40, p50, p50Interval: [p50 * 0.95, p50 * 1.05], ...(options.p99 === undefined ? {} : { p99: options.p99 }), mean: p50, throughput: (batch * 1000) / p50 };
}
const sha = (runId: string) => runId.padEnd(64, '0');
const onnx = (runId: string) => ({ uri: `s3://heimdall-models/models/localization/${runId}/model.onnx`, sha256: sha(runId).split('').reverse().join(''), bytes: 153_000, opset: 14, irVersion: 7 });
const benchmarked = (runId: string, perBatch: LatencyStats[]) =>
  createEvent('heimdall.model.benchmarked', {
    stage: 'benchmark',
    source: 'heimdall/benchmark',
    data: {
      runId,
      checkpoint: { uri: `s3://heimdall-checkpoints/${runId}/model.pth`, sha256: sha(runId), format: 'torch-zip' },
      onnx: onnx(runId),
      provider: 'cpu',
      threads: 2,
      sessionCreateMs: 12,
      perBatch,
      parity: { reference: 'reference-impl', samples: 4, perOutput: { positions: { maxAbs: 6e-8, meanAbs: 1e-8 } }, tolerance: 1e-5, passed: true },
      warnings: [],
    },
  });
const passed: GateVerdict = { passed: true, checks: [{ name: 'latency', passed: true, value: 1.01, limit: 1.1, policy: 'block', detail: 'p50 ratio 1.01 [0.98, 1.04] at batch 1' }] };
const heldBack: GateVerdict = { passed: false, checks: [{ name: 'latency', passed: false, value: 1.4, limit: 1.1, policy: 'block', detail: 'p50 ratio 1.40 [1.31, 1.52] at batch 1' }] };
const registered = (runId: string, version: string, created = true, gate = passed) =>
  createEvent('heimdall.model.registered', {
    stage: 'register',
    source: 'heimdall/register',
    data: {
      runId,
      registry: { name: MODEL, version, runId: `mlflow-${runId}`, modelUri: `models:/${MODEL}/${version}`, created },
      gate,
      alias: { name: 'staging', moved: created && gate.passed },
      onnx: onnx(runId),
    },
  });
const created = (runId: string, key: string) =>
  createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'heimdall-checkpoints', key, size: 712, etag: 'e', runId } });
const fold = (events: AnyCloudEvent[]) => events.reduce<RunState | undefined>((state, event) => applyEvent(state, event), undefined)!;

const failedRun = fold([
  created('e409bb8abadbd75f', 'uploads/<img src=x onerror=alert(1)>.pt'),
  failureEvent('e409bb8abadbd75f', 'export', new HeimdallError('UNSAFE_PICKLE', 'refused global posix.system in <script>alert(2)</script>')),
]);
const registeredRun = (runId: string, version: string, p50: number, created = true, gate = passed) =>
  fold([benchmarked(runId, [latency(1, p50, { n: 400, p99: p50 * 1.5 }), latency(8, p50 * 6, { n: 120, p99: p50 * 9 }), latency(32, p50 * 18, { n: 30 })]), registered(runId, version, created, gate)]);

/** A local registry in a fresh dir holding `count` versions (distinct sha256s). */
async function localRegistry(count: number): Promise<ModelRegistry> {
  const dir = await tempDir();
  const registry = new LocalModelRegistry(dir);
  for (let i = 1; i <= count; i++) {
    const runId = `00000000000000c${i}`;
    const modelPath = join(dir, `model-${i}.onnx`);
    await writeFile(modelPath, `model ${i}`);
    await registry.register({ name: MODEL, sha256: onnx(runId).sha256, pipelineRunId: runId, modelPath, modelUri: onnx(runId).uri, tags: {}, params: {}, metrics: {}, report: {} });
  }
  return registry;
}

describe('status page data', () => {
  it('shows each stage of a run in pipeline order, and why it failed', () => {
    const view = runView(failedRun);
    expect(view.stages.map((s) => [s.name, s.status])).toEqual([
      ['ingest', 'done'],
      ['export', 'failed'],
      ['validate', 'pending'],
      ['parity', 'pending'],
      ['benchmark', 'pending'],
      ['register', 'pending'],
    ]);
    expect(view.error).toEqual({ stage: 'export', code: 'UNSAFE_PICKLE', message: 'refused global posix.system in <script>alert(2)</script>' });
  });

  it('puts one point per registered version on the chart, oldest first, counting a re-registered model once', () => {
    const v1 = registeredRun('00000000000000b1', '1', 1);
    const v2 = registeredRun('00000000000000b2', '2', 1.5);
    const again = registeredRun('00000000000000b3', '1', 9, false);
    // As the store lists them: most recently updated first.
    const versions = registeredVersions([again, v2, v1, failedRun]);
    expect(versions.map((v) => [v.version, v.runId])).toEqual([
      ['1', '00000000000000b1'],
      ['2', '00000000000000b2'],
    ]);
    expect(versions[0]!.perBatch).toEqual([
      { batch: 1, n: 400, p50: 1, p50Interval: [0.95, 1.05], p99: 1.5 },
      { batch: 8, n: 120, p50: 6, p50Interval: [6 * 0.95, 6 * 1.05], p99: 9 },
      { batch: 32, n: 30, p50: 18, p50Interval: [18 * 0.95, 18 * 1.05] },
    ]);
  });

  it('shows each alias with its holder and its moves, newest first', async () => {
    const registry = await localRegistry(3);
    await promote(registry, { name: MODEL, alias: 'staging', version: '1', reason: 'gate passed', actor: 'heimdall/register' });
    await promote(registry, { name: MODEL, alias: 'staging', version: '2', reason: 'gate passed', actor: 'heimdall/register' });
    await promote(registry, { name: MODEL, alias: 'production', version: '2', reason: 'manual', actor: 'alice' });
    await promote(registry, { name: MODEL, alias: 'staging', version: '1', reason: 'rollback', actor: 'bob' });
    const view = await modelAliases(registry, MODEL);
    expect(view.error).toBeUndefined();
    expect(view.aliases.map((a) => [a.alias, a.holder, a.moves.map((m) => [m.version, m.previous, m.reason, m.actor])])).toEqual([
      ['production', '2', [['2', undefined, 'manual', 'alice']]],
      [
        'staging',
        '1',
        [
          ['1', '2', 'rollback', 'bob'],
          ['2', '1', 'gate passed', 'heimdall/register'],
          ['1', undefined, 'gate passed', 'heimdall/register'],
        ],
      ],
    ]);
  });

  it('says when the registry cannot be read, and still shows the runs', async () => {
    const dir = await tempDir();
    await mkdir(join(dir, 'registry'));
    await writeFile(join(dir, 'registry', 'registry.json'), '{ not json');
    const store = { list: async () => [failedRun], get: async () => undefined, update: async () => failedRun };
    const data = await gatherDashboard(store, { registry: new LocalModelRegistry(dir), name: MODEL });
    expect(data.runs.map((r) => r.runId)).toEqual([failedRun.runId]);
    expect(data.models).toHaveLength(1);
    expect(data.models[0]!.error).toMatch(/\S/);
  });

  it('spans the latency axis with 1-2-5 ticks', () => {
    expect(logTicks([0.9, 27])).toEqual([0.5, 1, 2, 5, 10, 20, 50]);
    expect(logTicks([3, 3])).toEqual([2, 5]);
    expect(logTicks([])).toEqual([]);
    expect(logTicks([Number.NaN, 0])).toEqual([]);
    expect(logTicks([0.04, 900])).toEqual([0.02, 0.1, 1, 10, 100, 1000]);
  });
});

describe('status page routes', () => {
  const first = registeredRun('00000000000000b1', '1', 1);
  const slower = registeredRun('00000000000000b2', '2', 1.4, true, heldBack);
  const store = { list: async () => [failedRun, slower, first], get: async (id: string) => (id === failedRun.runId ? failedRun : undefined), update: async () => failedRun };
  let app: ReturnType<typeof dashboardApp>;
  beforeAll(async () => {
    const registry = await localRegistry(2);
    await promote(registry, { name: MODEL, alias: 'staging', version: '1', reason: 'gate passed', actor: 'heimdall/register' });
    await promote(registry, { name: MODEL, alias: 'production', version: '2', reason: 'manual', actor: 'alice <script>' });
    app = dashboardApp({ runState: store, models: { registry, name: MODEL }, logger, refreshSeconds: 5 });
  });

  it('escapes what users control: checkpoint keys and error messages stay text', async () => {
    const response = await app.request('/');
    expect(response.headers.get('content-type')).toMatch(/^text\/html/);
    const body = await response.text();
    expect(body).toContain('uploads/&lt;img src=x onerror=alert(1)&gt;.pt');
    expect(body).toContain('refused global posix.system in &lt;script&gt;alert(2)&lt;/script&gt;');
    expect(body).not.toMatch(/<img|<script>alert/);
    expect(body).toContain('by alice &lt;script&gt;');
  });

  it('shows each alias holder, the gate verdict of each run, p50 with its interval and p99 only where reported', async () => {
    const body = await (await app.request('/fragment')).text();
    expect(body).toContain(`data-alias="production" data-holder="2"`);
    expect(body).toContain(`data-alias="staging" data-holder="1"`);
    expect(body).toMatch(/<li class="move" data-version="2" data-reason="manual">.*<strong>v2<\/strong>/);
    expect(body).toContain('gate passed, took @staging');
    expect(body).toContain('gate failed: latency, @staging held back');
    expect(body).toContain('b1 1.00 ms <span class="muted">[0.95–1.05]</span> / 1.50 ms <span class="muted">n=400</span>');
    expect(body).toContain('b32 18.0 ms <span class="muted">[17.10–18.90]</span> / – <span class="muted">n=30</span>');
    // The chart: a p50 point and its interval for each batch; p99 points at batches 1 and 8 only.
    for (const batch of [1, 8, 32]) expect(body).toContain(`class="point" data-version="1" data-batch="${batch}" data-stat="p50"`);
    expect(body).toContain('class="interval" data-version="1" data-batch="32"');
    expect(body).toContain('data-version="1" data-batch="8" data-stat="p99"');
    expect(body).not.toContain('data-batch="32" data-stat="p99"');
  });

  it('serves the part the open page refreshes, never from a cache', async () => {
    const response = await app.request('/fragment');
    expect(response.headers.get('cache-control')).toBe('no-store');
    const body = await response.text();
    expect(body).toContain('data-run-id="e409bb8abadbd75f"');
    expect(body).not.toContain('<html');
  });

  it('serves the run records as JSON', async () => {
    expect(await (await app.request('/api/runs')).json()).toEqual({ runs: [failedRun, slower, first] });
    expect(await (await app.request(`/api/runs/${failedRun.runId}`)).json()).toEqual(failedRun);
    expect((await app.request('/api/runs/0000000000000000')).status).toBe(404);
    expect((await app.request('/api/runs/..%2F..%2Fetc')).status).toBe(404);
  });
});

describe('startDashboard', () => {
  it('listens on a free port until closed', async () => {
    const store = new FsRunStateStore(await tempDir());
    await store.update(failedRun.runId, () => failedRun);
    const models = { registry: await localRegistry(0), name: MODEL };
    const dashboard = await startDashboard({ runState: store, models, port: 0, host: '127.0.0.1', logger });
    expect(dashboard.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    const data = await gatherDashboard(store, models);
    expect(data.counts).toEqual({ running: 0, registered: 0, failed: 1 });
    expect(await (await fetch(dashboard.url)).text()).toContain('UNSAFE_PICKLE');
    await dashboard.close();
    await expect(fetch(dashboard.url)).rejects.toThrow();
  });

  it('reports a port it cannot listen on', async () => {
    const models = { registry: await localRegistry(0), name: MODEL };
    const first = await startDashboard({ runState: new FsRunStateStore(await tempDir()), models, port: 0, logger });
    try {
      const port = Number(new URL(first.url).port);
      await expect(startDashboard({ runState: new FsRunStateStore(await tempDir()), models, port, logger })).rejects.toThrow(`status page cannot listen on 127.0.0.1:${port}: listen EADDRINUSE`);
    } finally {
      await first.close();
    }
  });
});
