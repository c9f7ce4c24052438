/**
 * The MLflow registry against a real MLflow 3 server, judged by MLflow's own Python client: the
 * model is a LoggedModel that `search_logged_models` finds, the version's source is `models:/m-…`
 * and its run the training run, the model directory is what `mlflow.onnx.log_model` writes for the
 * same ONNX file (diffed field by field), `mlflow models serve` scores the registered input
 * example, concurrent registrations of one sha256 leave one version, and aliases move with their
 * history so that `models:/<name>@production` loads the version holding it; a move expecting a
 * holder that changed meanwhile is refused, an alias MLflow rejects leaves no history behind, and
 * `checkAliasName` refuses exactly the names this MLflow refuses.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkAliasName, promote, rollbackTarget } from '../../shared/gate/promotion.ts';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { MlflowClient } from '../../shared/registry/mlflow/client.ts';
import { inputExample, SERVING_INPUT_FILE } from '../../shared/registry/mlflow/mlmodel.ts';
import { MlflowModelRegistry } from '../../shared/registry/mlflow/registry.ts';
import type { ModelVersion, RegistrationRequest } from '../../shared/registry/model-registry.ts';
import { MLFLOW_OFFLINE_ENV, startMlflowServer, type MlflowServer } from '../support/services/mlflow-server.ts';
import { answers, freePort, startService } from '../support/services/service-process.ts';
import { runServicesPython, servicesVenvBin } from '../support/services/venv.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const MODEL = 'heimdall-localization';
const EXPERIMENT = 'heimdall-localization';

interface Described {
  model_id: string;
  name: string;
  status: string;
  source_run_id: string;
  artifact_location: string;
  params: Record<string, string>;
  metrics: Record<string, number>;
  tags: Record<string, string>;
  files: string[];
  mlmodel: Record<string, unknown>;
  texts: Record<string, string>;
}
interface RunAnswer {
  run: { info: { run_id: string; user_id?: string }; data: { params?: Array<{ key: string; value: string }>; metrics?: Array<{ key: string; value: number }>; tags?: Array<{ key: string; value: string }> } };
}

const dir = await tempDir('heimdall-mlflow3-');
let mlflow: MlflowServer;
let api: MlflowClient;
let registry: MlflowModelRegistry;
/** Small LoggedModel-sized ONNX files (seed -> distinct bytes). */
const models: Record<number, { path: string; sha256: string }> = {};

const python = (args: string[]) => runServicesPython('mlflow3_models.py', args, { ...mlflow.env, ...MLFLOW_OFFLINE_ENV });

/** A model as the export stage stores it: model.onnx and its weights in model.onnx.data. */
async function smallModel(seed: number): Promise<{ path: string; sha256: string }> {
  const checkpoint = join(dir, `small-${seed}.pth`);
  const path = join(dir, `small-${seed}`, 'model.onnx');
  await mkdir(dirname(path), { recursive: true });
  await writeSmallCheckpoint(checkpoint, { seed });
  await exportCheckpoint(checkpoint, path, { externalData: true });
  return { path, sha256: createHash('sha256').update(await readFile(path)).digest('hex') };
}

function request(seed: number, overrides: Partial<RegistrationRequest> = {}): RegistrationRequest {
  const { path, sha256 } = models[seed]!;
  return {
    name: MODEL,
    sha256,
    pipelineRunId: sha256.slice(0, 16),
    modelPath: path,
    externalDataPath: `${path}.data`,
    modelUri: `s3://heimdall-models/models/localization/${sha256.slice(0, 16)}/model.onnx`,
    tags: { onnx_uri: `s3://heimdall-models/models/localization/${sha256.slice(0, 16)}/model.onnx`, 'training.val_loss': '0.25' },
    params: { variant: 'custom', 'optimizer.lr': '0.001' },
    metrics: { 'training.val_loss': 0.25, 'training.epoch': 7, latency_p50_batch1_ms: 1.5 },
    report: { runId: sha256.slice(0, 16), seed },
    ...overrides,
  };
}

async function run(runId: string) {
  const { run } = await api.get<RunAnswer>('runs/get', { run_id: runId });
  const pairs = <T>(items: Array<{ key: string; value: T }> | undefined) => Object.fromEntries((items ?? []).map((i) => [i.key, i.value]));
  return { userId: run.info.user_id, params: pairs(run.data.params), metrics: pairs(run.data.metrics), tags: pairs(run.data.tags) };
}

beforeAll(async () => {
  [mlflow] = await Promise.all([startMlflowServer(), ...[1, 2, 3].map(async (seed) => (models[seed] = await smallModel(seed)))]);
  api = new MlflowClient({ trackingUri: mlflow.url, username: mlflow.username, password: mlflow.password });
  registry = new MlflowModelRegistry({ trackingUri: mlflow.url, username: mlflow.username, password: mlflow.password, experimentName: EXPERIMENT });
});
afterAll(async () => {
  await mlflow?.stop();
});

describe('a model registered on MLflow 3', () => {
  let trainingRunId: string;
  let registered: { version: ModelVersion; created: boolean };
  let ours: Described;
  beforeAll(async () => {
    // The trainer's run, as Lightning's MLflowLogger leaves it: its hyper-parameter and its own metric.
    const { experiment_id } = await api.post<{ experiment_id: string }>('experiments/create', { name: 'training' });
    ({ run: { info: { run_id: trainingRunId } } } = await api.post<RunAnswer>('runs/create', { experiment_id, start_time: Date.now() }));
    await api.post('runs/log-batch', { run_id: trainingRunId, params: [{ key: 'optimizer.lr', value: '0.001' }], metrics: [{ key: 'val_loss', value: 0.25, timestamp: Date.now(), step: 7 }] });
    registered = await registry.register(request(1, { trainingRunId }));
    ours = JSON.parse(await python(['show', registered.version.source.slice('models:/'.length)])) as Described;
  });

  it('is a READY LoggedModel that search_logged_models finds, the source of version 1, with the training run as its run', async () => {
    expect(registered).toMatchObject({ created: true, version: { version: '1', runId: trainingRunId, source: expect.stringMatching(/^models:\/m-[0-9a-f]{32}$/), aliases: [] } });
    expect(Date.now() - Date.parse(registered.version.created)).toBeLessThan(600_000);
    const found = JSON.parse(await python(['search', EXPERIMENT, MODEL])) as Array<{ model_id: string; status: string; source_run_id: string }>;
    expect(found).toEqual([{ model_id: ours.model_id, name: MODEL, status: 'READY', source_run_id: trainingRunId }]);
    expect(ours).toMatchObject({ status: 'READY', source_run_id: trainingRunId, params: { variant: 'custom', 'optimizer.lr': '0.001', sha256: models[1]!.sha256 } });
    expect(ours.tags).toMatchObject({ 'mlflow.user': userInfo().username });
    // MLflow 3 links a run's metrics to a LoggedModel by the model_id they are logged with.
    expect(ours.metrics).toMatchObject({ 'training.val_loss': 0.25, 'training.epoch': 7, latency_p50_batch1_ms: 1.5 });
  });

  it("puts the training metrics and hyper-parameters on the version's run, the trainer's own values untouched", async () => {
    const training = await run(registered.version.runId);
    expect(training.params).toEqual({ 'optimizer.lr': '0.001', variant: 'custom' });
    expect(training.metrics).toEqual({ val_loss: 0.25, 'training.val_loss': 0.25, 'training.epoch': 7 });
  });

  it('keeps one pipeline run with every param, metric and tag, mlflow.user set, and the report as its artifact', async () => {
    const { runs = [] } = await api.post<{ runs?: Array<{ info: { run_id: string } }> }>('runs/search', {
      experiment_ids: [(await api.get<{ experiment: { experiment_id: string } }>('experiments/get-by-name', { experiment_name: EXPERIMENT })).experiment.experiment_id],
    });
    expect(runs).toHaveLength(1);
    const pipeline = await run(runs[0]!.info.run_id);
    expect(registered.version.tags['heimdall.mlflow_run_id']).toBe(runs[0]!.info.run_id);
    expect(pipeline).toMatchObject({ userId: userInfo().username, params: { variant: 'custom', sha256: models[1]!.sha256 }, tags: { 'mlflow.user': userInfo().username, onnx_uri: expect.any(String) } });
    expect(pipeline.metrics).toMatchObject({ 'training.val_loss': 0.25, latency_p50_batch1_ms: 1.5 });
    const { files = [] } = await api.get<{ files?: Array<{ path: string }> }>('artifacts/list', { run_id: runs[0]!.info.run_id });
    expect(files.map((f) => f.path)).toEqual(['report.json']);
  });

  it('holds the files and MLmodel fields mlflow.onnx.log_model writes for the same ONNX file', async () => {
    const inputs = join(dir, 'example.f32');
    await writeFile(inputs, Buffer.from(inputExample().buffer));
    const metadata = join(dir, 'metadata.json');
    await writeFile(metadata, JSON.stringify((ours.mlmodel as { metadata: Record<string, string> }).metadata));
    const reference = JSON.parse(await python(['log', 'log-model-reference', models[1]!.path, inputs, metadata])) as Described;

    // log_model names the weights' file by a uuid; ours is named after the model file.
    const weightsNamed = (files: string[]) => files.map((f) => (f.endsWith('.data') ? '<weights>.data' : f)).sort();
    expect(weightsNamed(ours.files)).toEqual(weightsNamed(reference.files));
    expect(ours.files).toEqual(['MLmodel', 'conda.yaml', 'input_example.json', 'model.onnx', 'model.onnx.data', 'python_env.yaml', 'requirements.txt', 'serving_input_example.json']);
    // Byte for byte: the pinned environment and both input examples.
    expect(ours.texts).toEqual(reference.texts);

    // Fields that name this model, its run or its time differ by nature: same shape, own values.
    const own = {
      artifact_path: (m: Described) => m.artifact_location,
      model_id: (m: Described) => m.model_id,
      model_uuid: (m: Described) => m.model_id,
      run_id: (m: Described) => m.source_run_id,
    };
    for (const [field, value] of Object.entries(own)) {
      expect(ours.mlmodel[field], field).toBe(value(ours));
      expect(reference.mlmodel[field], field).toBe(value(reference));
    }
    const utcTime = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$/;
    expect(ours.mlmodel['utc_time_created']).toMatch(utcTime);
    expect(reference.mlmodel['utc_time_created']).toMatch(utcTime);
    const rest = (m: Record<string, unknown>) => {
      // model_size_bytes: onnx.save_model lays the weights out in its own way (names, padding).
      const { artifact_path, model_id, model_uuid, run_id, utc_time_created, signature, model_size_bytes, ...others } = m as Record<string, unknown> & { signature: Record<string, string | null> };
      const parsed = Object.fromEntries(Object.entries(signature).map(([k, v]) => [k, v === null ? null : JSON.parse(v)]));
      return { ...others, signature: parsed };
    };
    expect(rest(ours.mlmodel)).toEqual(rest(reference.mlmodel));
    // save_model sums the model's files and the two input examples (written before MLmodel and the environment files).
    const modelFiles = (await stat(models[1]!.path)).size + (await stat(`${models[1]!.path}.data`)).size;
    const examples = ['input_example.json', SERVING_INPUT_FILE].reduce((sum, name) => sum + Buffer.byteLength(ours.texts[name]!), 0);
    expect(ours.mlmodel['model_size_bytes']).toBe(modelFiles + examples);
  });

  it('is scored by mlflow models serve on its registered input example', async () => {
    const bin = await servicesVenvBin();
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const served = await startService('mlflow models serve', join(bin, 'mlflow'), ['models', 'serve', '-m', `models:/${MODEL}/1`, '--env-manager', 'local', '-h', '127.0.0.1', '-p', String(port)], {
      env: { ...process.env, ...mlflow.env, ...MLFLOW_OFFLINE_ENV, PATH: `${bin}:${process.env['PATH']}` },
      logFile: join(dir, 'serve.log'),
      ready: () => answers(`${url}/ping`),
      timeoutMs: 180_000,
    });
    try {
      // The registered file, as Python MLflow downloaded it.
      const response = await fetch(`${url}/invocations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: ours.texts[SERVING_INPUT_FILE] });
      expect(response.status).toBe(200);
      const { predictions } = (await response.json()) as { predictions: Record<string, number[][]> };
      expect(Object.keys(predictions).sort()).toEqual(['positions', 'uncertainties']);
      for (const output of Object.values(predictions)) {
        expect(output).toHaveLength(1);
        expect(output[0]).toHaveLength(2);
        expect(output[0]!.every(Number.isFinite)).toBe(true);
      }
    } finally {
      await served.stop();
    }
  });
});

describe('registration and aliases on MLflow 3', () => {
  it('registers one version when several workers register the same model at once, its run the pipeline run', async () => {
    const same = request(2);
    const results = await Promise.all([1, 2, 3].map(() => registry.register(same)));
    expect(new Set(results.map((r) => r.version.version))).toEqual(new Set(['2']));
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect((await registry.listVersions(MODEL)).filter((v) => v.tags['sha256'] === same.sha256)).toHaveLength(1);
    const found = JSON.parse(await python(['search', EXPERIMENT, MODEL])) as unknown[];
    expect(found).toHaveLength(2);
    // No training run known: the LoggedModel's source run, and the version's, is ours.
    const version = results[0]!.version;
    expect(version.runId).toBe(version.tags['heimdall.mlflow_run_id']);
    expect((await run(version.runId)).metrics).toMatchObject({ 'training.val_loss': 0.25, 'training.epoch': 7 });
    expect((await run(version.runId)).params).toMatchObject({ 'optimizer.lr': '0.001' });
  });

  it('moves aliases with their history, changes nothing on a redelivery, rolls back, and production loads in Python', async () => {
    // Version numbers are not dense: the race above deleted the losers' versions.
    const third = (await registry.register(request(3))).version.version;
    expect((await registry.listVersions(MODEL)).map((v) => [v.version, v.aliases])).toEqual([['1', []], ['2', []], [third, []]]);
    expect(await registry.setAlias(MODEL, 'production', '1', { reason: 'gate passed', actor: 'heimdall/register' })).toEqual({ moved: true });
    expect(await registry.setAlias(MODEL, 'production', third, { reason: 'manual', actor: 'ops' })).toEqual({ previous: '1', moved: true });
    expect(await registry.setAlias(MODEL, 'production', third, { reason: 'manual', actor: 'ops' })).toEqual({ previous: third, moved: false });
    await expect(registry.setAlias(MODEL, 'production', '99', { reason: 'manual', actor: 'ops' })).rejects.toMatchObject({ code: 'REGISTRY_REJECTED' });

    const history = await registry.aliasHistory(MODEL);
    expect(history).toEqual({
      production: [
        { version: '1', at: expect.any(String), reason: 'gate passed', actor: 'heimdall/register' },
        { version: third, previous: '1', at: expect.any(String), reason: 'manual', actor: 'ops' },
      ],
    });
    expect(rollbackTarget(MODEL, 'production', history['production']!)).toBe('1');
    expect(await registry.setAlias(MODEL, 'production', '1', { reason: 'rollback', actor: 'ops' })).toEqual({ previous: third, moved: true });
    expect((await registry.aliasHistory(MODEL))['production']).toHaveLength(3);
    expect(await registry.getVersionByAlias(MODEL, 'production')).toMatchObject({ version: '1', aliases: ['production'] });
    expect((await registry.listVersions(MODEL)).map((v) => [v.version, v.aliases])).toEqual([['1', ['production']], ['2', []], [third, []]]);

    const batch = 1;
    const inputs = join(dir, 'load.f32');
    await writeFile(inputs, Buffer.from(inputExample().buffer));
    const loaded = JSON.parse(await runServicesPython('load_registered_model.py', [`models:/${MODEL}@production`, inputs, String(batch)], { ...mlflow.env, ...MLFLOW_OFFLINE_ENV })) as { sha256: string; version: { version: string }; onnx: Record<string, number[]> };
    expect(loaded.version.version).toBe('1');
    expect(loaded.sha256).toBe(models[1]!.sha256);
    expect(loaded.onnx['positions']).toHaveLength(2);
  });

  it('refuses a compare-and-set move when the alias moved meanwhile, recording nothing, and makes it when the holder is the expected one', async () => {
    const third = (await registry.listVersions(MODEL)).at(-1)!.version;
    const manual = { reason: 'manual', actor: 'ops' } as const;
    expect(await registry.setAlias(MODEL, 'staging', '1', manual)).toEqual({ moved: true });
    const before = await registry.aliasHistory(MODEL);
    await expect(registry.setAlias(MODEL, 'staging', '2', { reason: 'gate passed', actor: 'heimdall/register', expectedHolder: null })).rejects.toMatchObject({
      code: 'REGISTRY_ERROR',
      message: expect.stringMatching(new RegExp(`^${MODEL}@staging moved to v1 meanwhile \\(expected unset\\): `)),
    });
    await expect(promote(registry, { name: MODEL, alias: 'staging', version: '2', reason: 'gate passed', actor: 'heimdall/register', expectedHolder: third })).rejects.toMatchObject({
      code: 'REGISTRY_ERROR',
      message: expect.stringMatching(new RegExp(`^${MODEL}@staging moved to v1 meanwhile \\(expected v${third}\\): `)),
    });
    expect(await registry.aliasHistory(MODEL)).toEqual(before);
    expect(await registry.getVersionByAlias(MODEL, 'staging')).toMatchObject({ version: '1' });

    const moved = await promote(registry, { name: MODEL, alias: 'staging', version: '2', reason: 'gate passed', actor: 'heimdall/register', expectedHolder: '1' });
    expect(moved).toMatchObject({ previous: '1', event: { data: { version: '2', previous: '1', alias: 'staging' } } });
    expect(moved.event!.data).not.toHaveProperty('expectedHolder');
    expect(await registry.setAlias(MODEL, 'staging', '2', { ...manual, expectedHolder: '1' })).toEqual({ previous: '2', moved: false });
    expect((await registry.aliasHistory(MODEL))['staging']!.map((c) => [c.version, c.previous])).toEqual([['1', undefined], ['2', '1']]);
  });

  it('leaves the alias history as it was when MLflow rejects the alias, and promote() refuses such names before MLflow sees them', async () => {
    const rawTags = async () => (await api.get<{ registered_model: { tags?: Array<{ key: string; value: string }> } }>('registered-models/get', { name: MODEL })).registered_model.tags ?? [];
    const manual = { reason: 'manual', actor: 'ops' } as const;
    const before = await rawTags();
    // No history yet: the tag written before the alias is deleted again.
    await expect(registry.setAlias(MODEL, 'latest', '2', manual)).rejects.toMatchObject({ code: 'REGISTRY_REJECTED', message: expect.stringContaining('INVALID_PARAMETER_VALUE') });
    expect(await rawTags()).toEqual(before);
    // A history already there (left by hand): put back byte for byte.
    const kept = JSON.stringify([{ version: '1', at: '2024-01-01T00:00:00.000Z', reason: 'manual', actor: 'someone' }]);
    await api.post('registered-models/set-tag', { name: MODEL, key: 'heimdall.alias_history.v7', value: kept });
    const withTag = await rawTags();
    await expect(registry.setAlias(MODEL, 'v7', '2', manual)).rejects.toMatchObject({ code: 'REGISTRY_REJECTED' });
    expect(await rawTags()).toEqual(withTag);
    expect((await registry.aliasHistory(MODEL))['v7']).toEqual(JSON.parse(kept));
    await api.delete('registered-models/delete-tag', { name: MODEL, key: 'heimdall.alias_history.v7' });
    expect((await registry.listVersions(MODEL)).flatMap((v) => v.aliases).sort()).toEqual(['production', 'staging']);

    // promote() refuses them with USAGE before reading the registry: the same refusal locally.
    for (const alias of ['latest', 'v7']) {
      await expect(promote(registry, { name: MODEL, alias, version: '2', reason: 'manual', actor: 'ops' })).rejects.toMatchObject({ code: 'USAGE' });
    }
    expect(await rawTags()).toEqual(before);
  });

  // Through setAlias, so MLflow judges the alias and its history tag's key (which caps an alias at 227 characters).
  it('checkAliasName refuses exactly the alias names this MLflow refuses', async () => {
    const names = ['latest', 'LaTeSt', 'v1', 'V012', 'v\u0661', 'a b', 'a/b', 'a.b', 'e\u0301', 'x'.repeat(256), 'x'.repeat(228), 'x'.repeat(227), 'canary-2_b', 'caf\u00e9', 'v1x', 'latest2', '\u216b'];
    const manual = { reason: 'manual', actor: 'ops' } as const;
    for (const alias of names) {
      const ours = (() => {
        try {
          checkAliasName(alias);
          return 'accepted';
        } catch (error) {
          expect(error, alias).toMatchObject({ code: 'USAGE' });
          return 'refused';
        }
      })();
      const theirs = await registry.setAlias(MODEL, alias, '2', manual).then(
        () => 'accepted',
        (error: unknown) => {
          expect(error, alias).toMatchObject({ code: 'REGISTRY_REJECTED' });
          return 'refused';
        },
      );
      expect(ours, JSON.stringify(alias)).toBe(theirs);
    }
    expect(() => checkAliasName('')).toThrow(expect.objectContaining({ code: 'USAGE' }));
    expect(() => checkAliasName('prod\n')).toThrow(expect.objectContaining({ code: 'USAGE' }));
  });
});
