/**
 * Each stage as a Knative function: CloudEvents in over `POST /` (binary or structured mode), the
 * result event back in binary mode, health and metrics endpoints, and a SIGTERM drain of a real
 * `heimdall function <stage>` process. Everything runs on the embedded default in a temp dir.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { once } from 'node:events';
import type { Hono } from 'hono';
import { beforeAll, describe, expect, it } from 'vitest';
import { stageFunctions } from '../../functions/index.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { fromMessage, STRUCTURED_CONTENT_TYPE, toBinary, type AnyCloudEvent, type CloudEvent } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { executeStage, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import { createFunctionApp } from '../../shared/pipeline/http/app.ts';
import { FunctionLifecycle } from '../../shared/pipeline/http/lifecycle.ts';
import { ingestLocalFile } from '../../shared/pipeline/local-ingest.ts';
import type { StageName } from '../../shared/pipeline/stage.ts';
import { MODELS_BUCKET } from '../../shared/storage/object-store.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { startWebhookReceiver } from '../support/webhook-receiver.ts';
import { failureEvent } from '../../shared/pipeline/failure.ts';
import { HeimdallError } from '../../shared/errors/index.ts';
import { tempDir } from '../support/temp.ts';

const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');
/** The shortest benchmark (a 1 ms budget: the fewest timed runs that give a p50 interval): these tests check behaviour, not latency. */
const QUICK = { HEIMDALL_BENCHMARK_BUDGET_MS: '1', HEIMDALL_BENCHMARK_MIN_RUNS: '3', HEIMDALL_BENCHMARK_WARMUP: '1' };

const stage = (name: StageName) => stageFunctions.find((s) => s.name === name)!;

async function environmentIn(dataDir: string): Promise<StageEnvironment> {
  const config = loadConfig({ HEIMDALL_DATA_DIR: dataDir, ...QUICK });
  const scratchDir = join(dataDir, 'scratch');
  await mkdir(scratchDir, { recursive: true });
  return { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir };
}

/** A small checkpoint put in the data dir's store, announced as ingest would. */
async function checkpointIn(dataDir: string, environment: StageEnvironment, write = writeSmallCheckpoint) {
  const path = join(dataDir, `${Math.random().toString(36).slice(2)}.pth`);
  await write(path);
  return ingestLocalFile(path, environment.store, () => undefined);
}

/** What Knative's Broker sends: the event in binary mode (attributes in ce-* headers), or structured mode. */
function post(app: Hono, event: AnyCloudEvent, mode: 'binary' | 'structured' = 'binary') {
  const { headers, body } = toBinary(event);
  return mode === 'binary'
    ? app.request('/', { method: 'POST', headers, body })
    : app.request('/', { method: 'POST', headers: { 'content-type': STRUCTURED_CONTENT_TYPE }, body: JSON.stringify(event) });
}

const replyEvent = async (response: Response) => fromMessage(response.headers, await response.text());

/** A sample's value from the Prometheus text at /metrics: the line of that name carrying all these labels, whatever their order. */
async function metric(app: Hono, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const text = await (await app.request('/metrics')).text();
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && wanted.every((label) => l.includes(label)));
  return line === undefined ? undefined : Number(line.split(' ').at(-1));
}

let dataDir: string;
let environment: StageEnvironment;
let created: CloudEvent<'heimdall.checkpoint.created'>;

beforeAll(async () => {
  dataDir = await tempDir('heimdall-function-http-');
  environment = await environmentIn(dataDir);
  created = await checkpointIn(dataDir, environment);
});

describe('a stage behind POST /', () => {
  it('answers each event with the next one in binary mode, binary or structured in, up to a registered model', async () => {
    const apps = Object.fromEntries(stageFunctions.map((s) => [s.name, createFunctionApp(s, environment)])) as Record<StageName, Hono>;

    const exported = await post(apps.export, created, 'binary');
    expect(exported.status).toBe(200);
    expect(Object.fromEntries(exported.headers)).toMatchObject({
      'ce-specversion': '1.0',
      'ce-type': 'heimdall.model.exported',
      'ce-source': 'heimdall/export',
      'ce-id': `${created.data.runId}.export`,
      'content-type': 'application/json',
    });
    const exportedEvent = await replyEvent(exported);
    expect(exportedEvent.data).toMatchObject({ runId: created.data.runId, onnx: { opset: 14 } });

    let event = exportedEvent;
    for (const [name, mode] of [['validate', 'structured'], ['parity', 'binary'], ['benchmark', 'structured'], ['register', 'binary']] as const) {
      const response = await post(apps[name], event, mode);
      event = await replyEvent(response);
      expect({ name, status: response.status, type: event.type }).toEqual({ name, status: 200, type: stage(name).output });
    }
    expect(event.data).toMatchObject({ runId: created.data.runId, registry: { version: '1', created: true }, alias: { name: 'staging', moved: true } });
  });

  it('rejects what is not a valid event of the type it consumes with 400 and the reason', async () => {
    const app = createFunctionApp(stage('export'), environment);
    const { headers, body } = toBinary(created);
    const cases = [
      { request: { headers: { 'content-type': 'application/json' }, body }, reason: /no ce-specversion header/ },
      { request: { headers, body: JSON.stringify({ ...created.data, size: -1 }) }, reason: /invalid heimdall\.checkpoint\.created: size: /i },
      { request: { headers: { ...headers, 'ce-type': 'heimdall.model.exported' }, body }, reason: /invalid heimdall\.model\.exported: / },
      { request: { headers: { 'content-type': STRUCTURED_CONTENT_TYPE }, body: '{"specversion":"1.0"' }, reason: /structured-mode body is not JSON/ },
    ];
    for (const { request, reason } of cases) {
      const response = await app.request('/', { method: 'POST', ...request });
      expect(response.status).toBe(400);
      expect(await response.json()).toEqual({ error: { code: 'INVALID_EVENT', message: expect.stringMatching(reason) } });
    }
  });

  it('rejects a valid event of another type with 400: a Trigger routed it to the wrong function', async () => {
    const response = await post(createFunctionApp(stage('validate'), environment), created);
    expect(response.status).toBe(400);
    expect(await response.json()).toEqual({
      error: { code: 'INVALID_EVENT', message: 'function validate consumes heimdall.model.exported, not heimdall.checkpoint.created' },
    });
  });

  it('answers a failure that retrying cannot fix with 200 and the pipeline.failed event, for the Broker to route, not retry', async () => {
    const garbage = await checkpointIn(dataDir, environment, (path) => writeFile(path, 'not a checkpoint'));
    const response = await post(createFunctionApp(stage('export'), environment), garbage);
    expect(response.status).toBe(200);
    expect(response.headers.get('ce-type')).toBe('heimdall.pipeline.failed');
    expect((await replyEvent(response)).data).toMatchObject({ runId: garbage.data.runId, stage: 'export', error: { code: 'UNSUPPORTED_FORMAT' }, retriable: false });
  });

  /** A model.exported event for a model at `uri` (its bytes need not be a model). */
  const exportedAt = (uri: string, runId = created.data.runId) =>
    ({
      ...created,
      id: `${runId}.export`,
      type: 'heimdall.model.exported',
      source: 'heimdall/export',
      data: {
        runId,
        checkpoint: { uri: environment.store.uri(created.data.bucket, created.data.key), sha256: created.data.sha256!, format: 'torch-zip' },
        onnx: { uri, sha256: created.data.sha256!, bytes: 10, opset: 14, irVersion: 7 },
        architecture: { name: 'LocalizationNet', variant: 'custom', params: 1 },
        warnings: [],
        durationMs: 1,
      },
    }) as CloudEvent<'heimdall.model.exported'>;

  it('answers an object uri of no store with 400 INVALID_EVENT, and one of another store with the failure, not retriable: never a 500', async () => {
    const app = createFunctionApp(stage('validate'), environment);
    const table = [
      { uri: 'http://example.com/model.onnx', status: 400 },
      { uri: 'models/localization/abc/model.onnx', status: 400 },
      { uri: '', status: 400 },
      { uri: 'file://elsewhere/model.onnx', status: 400 },
      { uri: `s3://${MODELS_BUCKET}/models/localization/abc/model.onnx`, status: 200 },
      { uri: 'file:///etc/passwd', status: 200 },
    ];
    for (const { uri, status } of table) {
      const response = await post(app, exportedAt(uri));
      const answer = response.status === 400 ? ((await response.json()) as { error: { code: string; message: string } }).error : (await replyEvent(response)).data;
      expect({ uri, status: response.status }).toEqual({ uri, status });
      if (status === 400) expect(answer).toMatchObject({ code: 'INVALID_EVENT', message: expect.stringContaining('onnx.uri: must be an absolute s3://bucket/key or file:///path uri') });
      else expect(answer).toMatchObject({ stage: 'validate', error: { code: 'INVALID_EVENT', message: expect.stringContaining(JSON.stringify(uri)) }, retriable: false });
    }
  });

  it('answers a malformed ONNX file with 200 and INVALID_MODEL, not retriable', async () => {
    const app = createFunctionApp(stage('validate'), environment);
    const runId = 'badbadbadbadbad0';
    const path = join(dataDir, 'truncated.onnx');
    // A graph field that claims more bytes than the file has.
    await writeFile(path, Uint8Array.from([0x08, 0x07, 0x3a, 0x7f, 0x0a]));
    await environment.store.putFile(MODELS_BUCKET, `models/localization/${runId}/model.onnx`, path);
    const response = await post(app, exportedAt(environment.store.uri(MODELS_BUCKET, `models/localization/${runId}/model.onnx`), runId));
    expect(response.status).toBe(200);
    expect((await replyEvent(response)).data).toMatchObject({ runId, stage: 'validate', error: { code: 'INVALID_MODEL', message: expect.stringMatching(/past the end of its file/) }, retriable: false });
  });

  it('answers a failure that may pass on retry (a disk error) with 500 and the pipeline.failed event, so the Broker retries', async () => {
    const brokenDir = await tempDir('heimdall-function-broken-');
    const broken = await environmentIn(brokenDir);
    const event = await checkpointIn(brokenDir, broken);
    // The models bucket cannot be created: a file is where its directory belongs.
    await mkdir(join(brokenDir, 'buckets'), { recursive: true });
    await writeFile(join(brokenDir, 'buckets', MODELS_BUCKET), '');
    const response = await post(createFunctionApp(stage('export'), broken), event);
    expect(response.status).toBe(500);
    expect((await replyEvent(response)).data).toMatchObject({ stage: 'export', error: { code: 'IO_ERROR' }, retriable: true });
  });

  it('answers 405 to other methods on the event endpoint, as Knative sinks must', async () => {
    const response = await createFunctionApp(stage('export'), environment).request('/');
    expect(response.status).toBe(405);
    expect(response.headers.get('allow')).toBe('POST');
  });
});

describe('health and metrics', () => {
  it('is live always, ready only while ready, and refuses events with 503 before and after', async () => {
    const lifecycle = new FunctionLifecycle();
    const app = createFunctionApp(stage('export'), environment, lifecycle);
    const status = async () => [(await app.request('/health/liveness')).status, (await app.request('/health/readiness')).status, (await post(app, created)).status];

    expect(await status()).toEqual([200, 503, 503]);
    lifecycle.ready();
    expect(await status()).toEqual([200, 200, 200]);
    await lifecycle.drain();
    expect(await status()).toEqual([200, 503, 503]);
  });

  it('refuses an oversized body with 413 before reading it whole', async () => {
    const app = createFunctionApp(stage('export'), environment);
    const { headers } = toBinary(created);
    const response = await app.request('/', { method: 'POST', headers: { ...headers, 'content-length': String(2 << 20) }, body: 'x'.repeat(2 << 20) });
    expect(response.status).toBe(413);
    expect(await response.json()).toEqual({ error: { code: 'INVALID_EVENT', message: expect.stringMatching(/larger than/) } });
  });

  it('counts events handled and failed per type, times the stage, and exposes the benchmark latency', async () => {
    const app = createFunctionApp(stage('benchmark'), environment);
    const handled = () => metric(app, 'heimdall_events_handled_total', { function: 'benchmark', type: 'heimdall.model.parity-checked' });
    const rejected = () => metric(app, 'heimdall_events_failed_total', { type: 'heimdall.model.parity-checked', code: 'INVALID_EVENT', retriable: 'false' });
    const timed = () => metric(app, 'heimdall_stage_duration_seconds_count', { outcome: 'succeeded' });
    const latency = () => metric(app, 'heimdall_inference_latency_seconds', { provider: 'cpu', batch: '1', quantile: '0.5' });
    expect(await handled()).toBeUndefined();
    expect(await latency()).toBeUndefined();

    let event: AnyCloudEvent = created;
    for (const name of ['export', 'validate', 'parity'] as const) event = await executeStage(stage(name), event, environment);
    expect((await post(app, event)).status).toBe(200);
    expect((await app.request('/', { method: 'POST', headers: toBinary(event).headers, body: '{}' })).status).toBe(400);

    expect(await handled()).toBe(1);
    expect(await rejected()).toBe(1);
    expect(await timed()).toBe(1);
    expect(await latency()).toBeGreaterThan(0);
  });
});

describe('heimdall function <stage>, the process a container runs', () => {
  /** Starts a function process; resolves with its port once it is listening. */
  async function start(args: string[], env: Record<string, string>): Promise<{ child: ChildProcess; port: number; base: string; output: () => string }> {
    const child = spawn(process.execPath, args, { env: { ...process.env, PORT: '0', HEIMDALL_DATA_DIR: dataDir, HEIMDALL_LOG_LEVEL: 'info', ...env } });
    let output = '';
    child.stdout!.on('data', (chunk) => (output += chunk));
    child.stderr!.on('data', (chunk) => (output += chunk));
    const port = await new Promise<number>((resolve, reject) => {
      const check = () => {
        // The CLI prints the port; the logs say it too (what functions/<stage>/main.ts leaves).
        const match = /listening on port (\d+)|"port":(\d+),.*"msg":"ready"/.exec(output);
        if (match) resolve(Number(match[1] ?? match[2]));
      };
      child.stdout!.on('data', check);
      child.stderr!.on('data', check);
      child.once('exit', (code) => reject(new Error(`exited with ${code} before listening:\n${output}`)));
    });
    return { child, port, base: `http://127.0.0.1:${port}`, output: () => output };
  }

  it('drains on SIGTERM: readiness and new events 503, the event in flight completes, then exit 0', async () => {
    let event: AnyCloudEvent = created;
    for (const name of ['export', 'validate', 'parity'] as const) event = await executeStage(stage(name), event, environment);
    // A time budget long enough that the benchmark is still running when the signal comes.
    const { child, base, output } = await start([heimdall, 'function', 'benchmark'], { HEIMDALL_BENCHMARK_BUDGET_MS: '500', HEIMDALL_BENCHMARK_WARMUP: '1' });
    const exited = once(child, 'exit');
    expect((await fetch(`${base}/health/readiness`)).status).toBe(200);

    let answered = false;
    const inFlight = fetch(base, { method: 'POST', ...toBinary(event) }).finally(() => (answered = true));
    const isInFlight = async () => /^heimdall_events_in_flight\{function="benchmark"\} 1$/m.test(await (await fetch(`${base}/metrics`)).text());
    while (!answered && !(await isInFlight())) await new Promise((r) => setTimeout(r, 20));
    expect(answered).toBe(false);
    child.kill('SIGTERM');
    await expect.poll(async () => (await fetch(`${base}/health/readiness`)).status).toBe(503);
    expect((await fetch(base, { method: 'POST', ...toBinary(event) })).status).toBe(503);

    const response = await inFlight;
    expect(response.status).toBe(200);
    expect(response.headers.get('ce-type')).toBe('heimdall.model.benchmarked');
    expect(await exited).toEqual([0, null]);
    expect(output()).toMatch(/"msg":"stopped"/);
  });

  it('functions/<stage>/main.ts is the same server, started on its own', async () => {
    const { child, base } = await start(['--import', 'tsx', join(import.meta.dirname, '../../functions/validate/main.ts')], {});
    const exited = once(child, 'exit');
    await expect.poll(async () => (await fetch(`${base}/health/readiness`)).status).toBe(200);
    child.kill('SIGTERM');
    expect(await exited).toEqual([0, null]);
  });

  it('alerts is a function too: any event in (202 at once), the alert out to the webhook; 400 for what is not an event', async () => {
    const receiver = await startWebhookReceiver();
    try {
      const { child, base } = await start([heimdall, 'function', 'alerts'], { HEIMDALL_ALERT_WEBHOOKS: `${receiver.url}/hook` });
      const exited = once(child, 'exit');
      const failed = failureEvent(created.data.runId, 'parity', new HeimdallError('PARITY_EXCEEDED', 'positions max |diff| 3e-2'));
      const response = await fetch(base, { method: 'POST', ...toBinary(failed) });
      expect(response.status).toBe(202);
      expect((await fetch(base, { method: 'POST', ...toBinary(created) })).status).toBe(202);
      expect((await fetch(base, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).status).toBe(400);
      await receiver.waitForRequests(1);
      expect(receiver.accepted()[0]).toMatch(new RegExp(`${created.data.runId} failed at parity: PARITY_EXCEEDED`));
      // A dead letter (Knative, after a Trigger's retries): the stage that never answered is reported.
      const deadLetter = await fetch(`${base}/dead-letter`, { method: 'POST', headers: { ...toBinary(created).headers, 'ce-knativeerrordest': 'http://heimdall-export.heimdall.svc', 'ce-knativeerrorcode': '500' }, body: toBinary(created).body });
      expect(deadLetter.status).toBe(202);
      await receiver.waitForRequests(2);
      expect(receiver.accepted()[1]).toMatch(/failed at export: DELIVERY_EXHAUSTED: heimdall\.checkpoint\.created .* was not handled by http:\/\/heimdall-export\.heimdall\.svc \(HTTP 500\)/);
      child.kill('SIGTERM');
      expect(await exited).toEqual([0, null]);
      expect(receiver.requests).toHaveLength(2);
    } finally {
      await receiver.close();
    }
  });

  it('refuses an unknown function with a usage error (exit 2)', async () => {
    const child = spawn(process.execPath, [heimdall, 'function', 'transmogrify']);
    let stderr = '';
    child.stderr.on('data', (chunk) => (stderr += chunk));
    expect(await once(child, 'exit')).toEqual([2, null]);
    expect(stderr).toMatch(/^error: USAGE: unknown function transmogrify; one of: export, validate, parity, benchmark, register, alerts/);
  });
});
