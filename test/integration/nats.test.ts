/**
 * The pipeline on a real nats-server with JetStream: MinIO-format notifications in, `heimdall serve`
 * worker processes, every step published, exactly-once effects under redelivery, crashes and restarts.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { encodeEvent } from '../../shared/bus/nats/codec.ts';
import { openKv } from '../../shared/bus/nats/provision.ts';
import { EVENTS_STREAM, subjectOf } from '../../shared/bus/nats/subjects.ts';
import { KvRunStateStore } from '../../shared/pipeline/run-state/kv.ts';
import { CHECKPOINTS_BUCKET } from '../../shared/storage/object-store.ts';
import { FsObjectStore } from '../../shared/storage/fs.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { minioNotification, PipelineObserver, registryVersions, startServe, startWatch, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { startWebhookReceiver } from '../support/webhook-receiver.ts';
import { tempDir } from '../support/temp.ts';

const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');
/** A first model's run: the six stages' events, then the gate's promotion of it to the alias. */
const RUN_EVENTS = ['heimdall.checkpoint.created', 'heimdall.model.exported', 'heimdall.model.validated', 'heimdall.model.parity-checked', 'heimdall.model.benchmarked', 'heimdall.model.registered', 'heimdall.model.promoted'];

let server: NatsServer;
let dir: string;
let workers: WorkerProcess[] = [];
let observer: PipelineObserver | undefined;

beforeAll(async () => {
  dir = await tempDir('heimdall-nats-');
});
afterEach(async () => {
  await Promise.all(workers.map(stopServe));
  workers = [];
  await observer?.close();
  observer = undefined;
  await server?.stop();
});
afterAll(async () => server?.stop());

/** A fresh server, data dir and observer per test: no state leaks between scenarios. */
async function pipeline(name: string, options: { ackWaitSeconds?: number; maxDeliver?: number; env?: Record<string, string>; args?: string[] } = {}) {
  server = await startNatsServer();
  const dataDir = join(dir, name);
  const env = { NATS_URL: server.url, HEIMDALL_DATA_DIR: dataDir, HEIMDALL_ACK_WAIT_SECONDS: String(options.ackWaitSeconds ?? 10), HEIMDALL_MAX_DELIVER: String(options.maxDeliver ?? 5), ...options.env };
  const store = new FsObjectStore(dataDir);
  const spawnWorker = (args = options.args) => {
    const worker = startServe(env, args);
    workers.push(worker);
    return worker;
  };
  const first = spawnWorker();
  // Streams exist once the first worker has provisioned them.
  await waitFor('workers to start', () => first.stderr().includes('serving'), 60_000);
  observer = await PipelineObserver.connect(server.url);
  observer.follow();
  /** Uploads a checkpoint as training would (into the bucket), then announces it as MinIO does. */
  const upload = async (key: string, seed: number) => {
    const path = join(dir, `${name}-${seed}.pth`);
    await writeSmallCheckpoint(path, { seed });
    const info = await store.putFile(CHECKPOINTS_BUCKET, key, path);
    const body = minioNotification(CHECKPOINTS_BUCKET, key, info);
    await observer!.notify(body);
    return { info, body };
  };
  return { env, dataDir, store, first, spawnWorker, upload, observer: observer! };
}

/**
 * The types of a run's events once its promotion has come too: model.promoted is published after
 * model.registered, so it may reach the observer a moment later.
 */
async function promotedRunEvents(observer: PipelineObserver, runId: string): Promise<string[]> {
  await waitFor(`the promotion of run ${runId}`, () => observer.of('heimdall.model.promoted', runId).length > 0, 30_000).catch(() => undefined);
  return observer.events.filter((e) => e.data.runId === runId).map((e) => e.type);
}

/** The run id once the run of `key` is registered; on a timeout, what the workers said (for CI logs). */
const registeredRun = (observer: PipelineObserver, key: string) =>
  waitFor(`the run of ${key} to be registered`, () => {
    const created = observer.of('heimdall.checkpoint.created').find((e) => e.data.key === key);
    return created && observer.of('heimdall.model.registered', created.data.runId).length > 0 && created.data.runId;
  }).catch((error: Error) => {
    const said = workers.map((w, i) => `worker ${i} (exit ${w.child.exitCode ?? w.child.signalCode ?? 'running'}):\n${w.stderr().slice(-3000)}`).join('\n');
    throw new Error(`${error.message}; events: ${observer.events.map((e) => e.id).join(', ')}\n${said}`);
  });

describe('heimdall serve on NATS JetStream', () => {
  it('takes a MinIO notification through all six stages, with run state in KV for status, watch and the status page', async () => {
    const { env, upload, observer, first } = await pipeline('full', { args: ['--dashboard', '--port', '0'] });
    await upload('runs/2026-11-27/epoch 12.pth', 1);
    const runId = await registeredRun(observer, 'runs/2026-11-27/epoch 12.pth');
    expect(await promotedRunEvents(observer, runId)).toEqual(RUN_EVENTS);
    // Deterministic ids: `<runId>.<stage>` for each stage's result, `<runId>.promoted.<alias>` for the gate's move.
    expect(observer.events.map((e) => e.id)).toEqual(observer.events.map((e) => (e.type === 'heimdall.model.promoted' ? `${e.data.runId}.promoted.staging` : `${e.data.runId}.${e.source.split('/')[1]}`)));

    const run = promisify(execFile);
    const status = await run(process.execPath, [heimdall, 'status', runId.slice(0, 8), '--json'], { env: { ...process.env, ...env } });
    expect(JSON.parse(status.stdout)).toMatchObject({ runId, status: 'registered', checkpoint: { key: 'runs/2026-11-27/epoch 12.pth' }, stages: { export: { status: 'done', attempts: 1 }, register: { status: 'done' } } });

    const page = /status page (http:\/\/\S+?);/.exec(first.stderr())![1]!;
    const { runs } = (await (await fetch(new URL('api/runs', page))).json()) as { runs: Array<{ runId: string; status: string }> };
    expect(runs).toEqual([expect.objectContaining({ runId, status: 'registered' })]);

    // watch --all replays the stream: seven lines, each readable on an 80-column terminal.
    const watch = startWatch(['--all', '--run', runId], env);
    await waitFor('seven watch lines', () => watch.stdout.length >= 7, 60_000);
    watch.child.kill('SIGINT');
    expect(await watch.exited).toBe(0);
    const lines = watch.stdout;
    expect(lines.map((l) => l.split(/\s+/)[2])).toEqual(['ingest', 'export', 'validate', 'parity', 'benchmark', 'register', 'promote']);
    expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(80);
  });

  it('runs once for the same notification three times and a tagging re-fire of the same etag', async () => {
    const { upload, observer, dataDir, store } = await pipeline('dedupe');
    const { info, body } = await upload('runs/dup.pth', 2);
    await observer.notify(body);
    await observer.notify(body);
    await observer.notify(minioNotification(CHECKPOINTS_BUCKET, 'runs/dup.pth', info, 's3:ObjectCreated:PutTagging'));
    const runId = await registeredRun(observer, 'runs/dup.pth');
    // Give the duplicates time to be (not) processed.
    await waitFor('ingest to take all four notifications', () => observer.idle('HEIMDALL_MINIO', 'heimdall-ingest'));
    await waitFor('the pipeline to be idle', () => observer.idle('HEIMDALL_EVENTS', 'heimdall-register'));
    expect(observer.of('heimdall.checkpoint.created')).toHaveLength(1);
    expect(observer.of('heimdall.model.registered', runId)).toHaveLength(1);
    expect(await registryVersions(dataDir)).toHaveLength(1);
    expect(await store.stat(CHECKPOINTS_BUCKET, 'runs/dup.pth')).toBeDefined();
  });

  it('survives kill -9 of a worker in the middle of export: a new worker completes the run, one version', async () => {
    const { first, spawnWorker, observer, dataDir, env } = await pipeline('crash', { ackWaitSeconds: 5 });
    // ConvNeXt-tiny (113 MB) takes a few seconds to export: time to kill the worker inside it.
    const run = promisify(execFile);
    const path = join(dir, 'crash-tiny.pth');
    await run(process.execPath, [heimdall, 'sample', '--variant', 'tiny', '--out', path], { env: { ...process.env, ...env } });
    const info = await new FsObjectStore(dataDir).putFile(CHECKPOINTS_BUCKET, 'runs/tiny.pth', path);
    await observer.notify(minioNotification(CHECKPOINTS_BUCKET, 'runs/tiny.pth', info));
    const runState = new KvRunStateStore(await openKv(observer.nc, 'heimdall_runs'));
    const created = await waitFor('ingest', () => observer.of('heimdall.checkpoint.created')[0]);
    await waitFor('export to start', async () => (await runState.get(created.data.runId))?.stages.export?.status === 'running');
    first.child.kill('SIGKILL');
    expect(await first.exited).toBe('SIGKILL');
    expect(observer.of('heimdall.model.exported')).toHaveLength(0);
    spawnWorker();
    const runId = await registeredRun(observer, 'runs/tiny.pth');
    expect(observer.of('heimdall.model.registered', runId)).toHaveLength(1);
    expect(await registryVersions(dataDir)).toHaveLength(1);
    expect((await runState.get(runId))?.stages.export).toMatchObject({ status: 'done', attempts: 2 });
  });

  it('completes a run across a nats-server restart (same store dir)', async () => {
    const { upload, observer, dataDir } = await pipeline('restart');
    await upload('runs/restart.pth', 3);
    await waitFor('the export', () => observer.of('heimdall.model.exported').length > 0);
    await server.restart();
    const runId = await registeredRun(observer, 'runs/restart.pth');
    expect(observer.of('heimdall.model.registered', runId)).toHaveLength(1);
    expect(await registryVersions(dataDir)).toHaveLength(1);
  });

  it('registers 20 checkpoints notified at once with two worker processes, none twice', async () => {
    const { upload, observer, dataDir, spawnWorker } = await pipeline('twenty');
    spawnWorker();
    const keys = Array.from({ length: 20 }, (_, i) => `batch/ckpt-${i}.pth`);
    await Promise.all(keys.map((key, i) => upload(key, 100 + i)));
    await waitFor('20 registrations', () => observer.of('heimdall.model.registered').length >= 20, 300_000);
    const versions = await registryVersions(dataDir);
    expect(versions).toHaveLength(20);
    expect(new Set(versions.map((v) => v.tags.sha256)).size).toBe(20);
  });

  it('starts a run for each record of a notification (several objects, a multipart upload among them)', async () => {
    const { store, observer, dataDir } = await pipeline('records');
    const records = [];
    for (const [i, eventName] of ['s3:ObjectCreated:Put', 's3:ObjectCreated:CompleteMultipartUpload'].entries()) {
      const path = join(dir, `records-${i}.pth`);
      await writeSmallCheckpoint(path, { seed: 40 + i });
      const key = `runs/record ${i}.pth`;
      records.push(JSON.parse(minioNotification(CHECKPOINTS_BUCKET, key, await store.putFile(CHECKPOINTS_BUCKET, key, path), eventName)).Records[0]);
    }
    await observer.notify(JSON.stringify({ EventName: 's3:ObjectCreated:Put', Key: 'several', Records: records }));
    await registeredRun(observer, 'runs/record 0.pth');
    await registeredRun(observer, 'runs/record 1.pth');
    expect(await registryVersions(dataDir)).toHaveLength(2);
  });

  it('sends an uploaded .onnx model straight to validate; without golden samples parity says so', async () => {
    const { store, observer } = await pipeline('onnx');
    const checkpoint = join(dir, 'onnx-source.pth');
    await writeSmallCheckpoint(checkpoint, { seed: 50 });
    const model = join(dir, 'uploaded.onnx');
    await promisify(execFile)(process.execPath, [heimdall, 'export', checkpoint, '--out', model]);
    const info = await store.putFile(CHECKPOINTS_BUCKET, 'models/uploaded.onnx', model);
    await observer.notify(minioNotification(CHECKPOINTS_BUCKET, 'models/uploaded.onnx', info));
    const failed = await waitFor('the parity verdict', () => observer.of('heimdall.pipeline.failed')[0]);
    const runId = failed.data.runId;
    expect(observer.events.filter((e) => e.data.runId === runId).map((e) => e.type)).toEqual(['heimdall.model.exported', 'heimdall.model.validated', 'heimdall.pipeline.failed']);
    expect(observer.of('heimdall.model.exported')[0]!).toMatchObject({ source: 'heimdall/ingest', data: { checkpoint: { format: 'onnx' }, architecture: { variant: 'custom' } } });
    expect(failed.data).toMatchObject({ stage: 'parity', error: { code: 'PARITY_UNAVAILABLE' }, retriable: false });
  });

  it('acknowledges malformed notifications without a crash or endless redelivery; a missing object fails clearly once, with one alert', async () => {
    const webhook = await startWebhookReceiver();
    const { observer, first, upload } = await pipeline('malformed', { env: { HEIMDALL_ALERT_WEBHOOKS: `${webhook.url}/alerts` } });
    await observer.notify('not json at all');
    await observer.notify(JSON.stringify({ EventName: 's3:ObjectCreated:Put', Key: 'x' }));
    await observer.notify(JSON.stringify({ Records: [{ eventName: 's3:ObjectRemoved:Delete', s3: { bucket: { name: 'training' }, object: { key: 'gone.pth' } } }] }));
    await observer.notify(minioNotification(CHECKPOINTS_BUCKET, 'runs/never-uploaded.pth', { size: 10, etag: 'abc' }));
    await observer.notify(minioNotification(CHECKPOINTS_BUCKET, 'runs/notes.txt', { size: 10, etag: 'abd' }));
    const failed = await waitFor('the failure of the missing object', () => observer.of('heimdall.pipeline.failed')[0]);
    expect(failed.data).toMatchObject({ stage: 'ingest', error: { code: 'OBJECT_NOT_FOUND' }, retriable: false, attempt: 1 });
    // The worker is alive and still works.
    await upload('runs/after.pth', 4);
    await registeredRun(observer, 'runs/after.pth');
    const ingest = await (await jetstreamManager(observer.nc)).consumers.info('HEIMDALL_MINIO', 'heimdall-ingest');
    expect(ingest.num_ack_pending).toBe(0);
    expect(ingest.num_pending).toBe(0);
    expect(ingest.num_redelivered).toBe(0);
    expect(observer.of('heimdall.pipeline.failed')).toHaveLength(1);
    expect(first.child.exitCode).toBeNull();
    // The alerts subscriber on its shared consumer: one alert, naming the run, stage and code.
    await webhook.waitForRequests(1);
    expect(webhook.accepted()).toEqual([expect.stringMatching(new RegExp(`${failed.data.runId}[\\s\\S]*ingest[\\s\\S]*OBJECT_NOT_FOUND`))]);
    await webhook.close();
  });

  it('terminates a foreign, invalid message on a stage subject: no run changes state, nothing is published, no alert', async () => {
    const webhook = await startWebhookReceiver();
    const { observer, upload, first } = await pipeline('foreign', { env: { HEIMDALL_ALERT_WEBHOOKS: `${webhook.url}/alerts` } });
    await upload('runs/foreign.pth', 8);
    const runId = await registeredRun(observer, 'runs/foreign.pth');
    const idle = () => Promise.all(['heimdall-export', 'heimdall-register', 'heimdall-subscribers'].map((durable) => waitFor(`${durable} to be idle`, () => observer.idle(EVENTS_STREAM, durable))));
    await idle();
    const jsm = await jetstreamManager(observer.nc);
    const runState = new KvRunStateStore(await openKv(observer.nc, 'heimdall_runs'));
    const before = { runs: await runState.list(), messages: (await jsm.streams.info(EVENTS_STREAM)).state.messages, alerts: webhook.requests.length };
    expect(before.runs).toEqual([expect.objectContaining({ runId, status: 'registered' })]);

    // Messages naming the registered run that are no valid event of the stage's input.
    const created = observer.of('heimdall.checkpoint.created', runId)[0]!;
    const binary = encodeEvent(created).headers;
    const js = jetstream(observer.nc);
    const structured = natsHeaders();
    structured.set('content-type', 'application/cloudevents+json');
    const benchmarked = natsHeaders();
    for (const [name, value] of Object.entries({ 'ce-specversion': '1.0', 'ce-id': `${runId}.benchmark`, 'ce-type': 'heimdall.model.benchmarked', 'ce-source': 'elsewhere' })) benchmarked.set(name, value);
    const foreign: Array<[string, string, ReturnType<typeof natsHeaders> | undefined]> = [
      [subjectOf('heimdall.checkpoint.created'), JSON.stringify({ runId, data: { runId } }), undefined],
      [subjectOf('heimdall.checkpoint.created'), JSON.stringify({ ...created, specversion: '0.3' }), undefined],
      [subjectOf('heimdall.checkpoint.created'), JSON.stringify({ ...created.data, size: -1 }), binary],
      [subjectOf('heimdall.checkpoint.created'), JSON.stringify({ ...created, data: { ...created.data, size: -1 } }), structured],
      [subjectOf('heimdall.model.benchmarked'), JSON.stringify({ runId }), benchmarked],
    ];
    for (const [subject, body, headers] of foreign) await js.publish(subject, body, headers ? { headers } : {});
    await idle();

    // Terminated once each, not redelivered; no failure event or anything else published; the run as it was.
    for (const durable of ['heimdall-export', 'heimdall-register']) expect((await jsm.consumers.info(EVENTS_STREAM, durable)).num_redelivered, durable).toBe(0);
    expect((await jsm.streams.info(EVENTS_STREAM)).state.messages).toBe(before.messages + foreign.length);
    expect(observer.of('heimdall.pipeline.failed')).toHaveLength(0);
    expect(await runState.list()).toEqual(before.runs);
    expect(first.stderr().match(/export: invalid event terminated/g)).toHaveLength(4);
    expect(first.stderr()).toMatch(/register: invalid event terminated/);
    expect(webhook.requests.length).toBe(before.alerts);
    expect(first.child.exitCode).toBeNull();
    await webhook.close();
  });

  it('retries a retriable failure, then after MaxDeliver publishes pipeline.failed and stops', async () => {
    const { observer, upload } = await pipeline('exhausted', { maxDeliver: 2, env: { HEIMDALL_BENCHMARK_BATCHES: '1,1000000' } });
    await upload('runs/too-big-batch.pth', 6);
    const failed = await waitFor('the benchmark failure', () => observer.of('heimdall.pipeline.failed')[0]);
    expect(failed.data).toMatchObject({ stage: 'benchmark', error: { code: 'BENCHMARK_FAILED' }, retriable: true, attempt: 2 });
    await waitFor('benchmark to be done with it', () => observer.idle('HEIMDALL_EVENTS', 'heimdall-benchmark'));
    expect(observer.of('heimdall.pipeline.failed')).toHaveLength(1);
    expect(observer.of('heimdall.model.registered')).toHaveLength(0);
  });

  it('runs every hop through POST / of an HTTP function behind the local broker (serve --http)', async () => {
    const { first, upload, observer } = await pipeline('http', { args: ['--http'] });
    await upload('runs/http.pth', 7);
    const runId = await registeredRun(observer, 'runs/http.pth');
    expect(await promotedRunEvents(observer, runId)).toEqual(RUN_EVENTS);
    // Each function counted its event: the broker delivered over HTTP, no NATS stage worker ran.
    const ports = Object.fromEntries([...first.stderr().matchAll(/(export|validate|parity|benchmark|register):(\d+)/g)].map((m) => [m[1], m[2]]));
    for (const [stage, input] of [['export', 'checkpoint.created'], ['validate', 'model.exported'], ['parity', 'model.validated'], ['benchmark', 'model.parity-checked'], ['register', 'model.benchmarked']]) {
      const metrics = await (await fetch(`http://127.0.0.1:${ports[stage!]}/metrics`)).text();
      expect(metrics, stage).toMatch(new RegExp(`heimdall_events_handled_total\\{[^}]*type="heimdall\\.${input!.replace('.', '\\.')}"[^}]*\\} 1`));
    }
    const consumers = await (await jetstreamManager(observer.nc)).consumers.list('HEIMDALL_EVENTS').next();
    // Durable consumers only (the observer's own ordered consumer is ephemeral).
    expect(consumers.filter((c) => c.config.durable_name).map((c) => c.name).sort()).toEqual(['heimdall-http-benchmark', 'heimdall-http-export', 'heimdall-http-parity', 'heimdall-http-register', 'heimdall-http-validate']);
  });

  it('drains on SIGTERM: the in-flight message finishes, the process exits 0, and the next worker completes the run once', async () => {
    const { first, upload, observer, spawnWorker, dataDir } = await pipeline('drain');
    await upload('runs/drain.pth', 5);
    await waitFor('work in flight', () => observer.of('heimdall.checkpoint.created').length > 0);
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    expect(first.stderr()).toContain('draining');
    spawnWorker();
    const runId = await registeredRun(observer, 'runs/drain.pth');
    // model.promoted follows model.registered: published after it, it may reach the observer a moment later.
    await waitFor('its promotion', () => observer.of('heimdall.model.promoted', runId).length > 0);
    for (const type of RUN_EVENTS) expect(observer.of(type as 'heimdall.model.exported', runId), type).toHaveLength(1);
    expect(await registryVersions(dataDir)).toHaveLength(1);
  });
});
