/**
 * Reconciliation on a real S3 server (moto) and a real nats-server, with `heimdall serve` and
 * `heimdall reconcile` as an operator runs them: checkpoints whose notification never came are
 * found in the bucket and run, once; what was announced, finished or in flight is left alone; and
 * sweeps take turns by a KV lock.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openKv } from '../../shared/bus/nats/provision.ts';
import { MINIO_STREAM } from '../../shared/bus/nats/subjects.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { connectRuntime, type NatsRuntime } from '../../shared/pipeline/nats/runtime.ts';
import { natsSweepPorts, sweep, type SweepReport } from '../../shared/pipeline/reconcile.ts';
import { KvAnnouncedUploads } from '../../shared/pipeline/run-state/announced.ts';
import { KvSweepLock } from '../../shared/pipeline/sweep-lock.ts';
import type { ListedObject } from '../../shared/storage/object-store.ts';
import { S3ObjectStore } from '../../shared/storage/s3.ts';
import { heimdallCommand } from '../support/heimdall-cli.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { minioNotification, PipelineObserver, registryVersions, startServe, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { startS3Server, type S3Server } from '../support/services/s3-server.ts';
import { writeSmallCheckpoint, writeSmallSafetensors, writeSmallTrainerCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const BUCKET = 'training';
const logger = createLogger('silent');

let nats: NatsServer;
let s3: S3Server;
let dir: string;
let env: Record<string, string>;
let store: S3ObjectStore;
let observer: PipelineObserver;
let runtime: NatsRuntime;
/** The process serving the stages after ingest. */
let rest: WorkerProcess;
const workers: WorkerProcess[] = [];

/** A `heimdall serve` process; resolves once it serves. */
async function serve(args: string[], extra: Record<string, string> = {}): Promise<WorkerProcess> {
  const worker = startServe({ ...env, ...extra }, args);
  workers.push(worker);
  return waitFor('serve to start', () => worker.stderr().includes('serving') && worker, 60_000);
}
const STAGES_AFTER_INGEST = ['--stages', 'export,validate,parity,benchmark,register'];

/** A trainer's upload, straight to the bucket: no notification is sent. */
async function upload(key: string, seed: number) {
  const path = join(dir, `seed-${seed}`);
  if (key.endsWith('.safetensors')) await writeSmallSafetensors(path, { epoch: String(seed) }, seed);
  else if (key.endsWith('.ckpt')) await writeSmallTrainerCheckpoint(path, 'lightning', { epoch: seed }, seed);
  else await writeSmallCheckpoint(path, { seed });
  return store.putFile(BUCKET, key, path);
}

/** `heimdall reconcile` in its own process; its report (the last line with --json). */
async function reconcile(): Promise<SweepReport> {
  const { code, stdout, stderr } = await heimdallCommand(['reconcile', '--bucket', BUCKET, '--json'], env);
  expect(code, stderr.join('\n')).toBe(0);
  return JSON.parse(stdout.at(-1)!) as SweepReport;
}

const runOf = (key: string) => observer.of('heimdall.checkpoint.created').find((e) => e.data.key === key)?.data.runId;
const registered = (keys: readonly string[]) =>
  waitFor(`the runs of ${keys.join(', ')} to be registered`, () => keys.every((key) => runOf(key) && observer.of('heimdall.model.registered', runOf(key)).length > 0), 240_000).catch((error: Error) => {
    throw new Error(`${error.message}; events: ${observer.events.map((e) => e.id).join(', ')}\n${workers.map((w) => w.stderr().slice(-2000)).join('\n')}`);
  });

beforeAll(async () => {
  dir = await tempDir('heimdall-reconcile-');
  [nats, s3] = await Promise.all([startNatsServer(), startS3Server()]);
  env = { NATS_URL: nats.url, ...s3.env, HEIMDALL_DATA_DIR: join(dir, 'data'), HEIMDALL_ACK_WAIT_SECONDS: '10', HEIMDALL_RECONCILE_INTERVAL: 'off' };
  store = new S3ObjectStore({ endpoint: s3.endpoint, accessKey: s3.accessKey, secretKey: s3.secretKey, region: s3.region });
  await serve(['--stages', 'ingest']);
  rest = await serve(STAGES_AFTER_INGEST);
  observer = await PipelineObserver.connect(nats.url);
  observer.follow();
  runtime = await connectRuntime(loadConfig(env), logger, 'reconcile-test', 'client');
});
afterAll(async () => {
  await Promise.all(workers.map(stopServe));
  await runtime?.close();
  await observer?.close();
  await Promise.all([nats?.stop(), s3?.stop()]);
});

const FIVE = ['runs/epoch 1.pth', 'runs/epoch 2.pth', 'runs/lightning/epoch=3.ckpt', 'runs/epoch 4.safetensors', 'runs/epoch 5.pt'];

describe('heimdall reconcile on S3 and NATS', () => {
  it('starts five runs for five checkpoints uploaded with no notification, and a second reconcile starts none', async () => {
    for (const [i, key] of FIVE.entries()) await upload(key, i + 1);
    await upload('runs/notes.txt', 9);

    const first = await reconcile();
    expect(first.started.map((run) => run.key).sort()).toEqual([...FIVE].sort());
    expect(first.started.every((run) => run.kind === 'queued')).toBe(true);
    expect(first).toMatchObject({ listed: 6, skipped: { ignored: 1, announced: 0 }, truncated: false });
    await registered(FIVE);
    const versions = await registryVersions(env.HEIMDALL_DATA_DIR!);
    expect(versions).toHaveLength(5);
    expect(new Set(versions.map((v) => v.tags.sha256)).size).toBe(5);

    const second = await reconcile();
    expect(second).toMatchObject({ listed: 6, started: [], skipped: { announced: 5, ignored: 1 } });
    // What the sweeps published: the five notifications MinIO never sent, nothing more.
    expect((await (await jetstreamManager(observer.nc)).streams.info(MINIO_STREAM)).state.messages).toBe(5);
    expect(observer.of('heimdall.checkpoint.created')).toHaveLength(5);
  });

  it('starts nothing for a run in flight', async () => {
    await stopServe(rest);
    const key = 'runs/in flight.pth';
    const info = await upload(key, 6);
    await observer.notify(minioNotification(BUCKET, key, info));
    // Ingest has taken the notification and marked the upload; nothing runs the later stages now.
    const marks = new KvAnnouncedUploads(await openKv(observer.nc, 'heimdall_ingest'));
    await waitFor('ingest to mark the upload', () => marks.runOf({ bucket: BUCKET, key, etag: info.etag }), 60_000);
    expect(runOf(key)).toBeDefined();
    expect(observer.of('heimdall.model.exported', runOf(key))).toHaveLength(0);

    const during = await reconcile();
    expect(during).toMatchObject({ listed: 7, started: [], skipped: { announced: 6, ignored: 1 } });

    rest = await serve(STAGES_AFTER_INGEST);
    await registered([key]);
    expect(observer.of('heimdall.checkpoint.created').filter((e) => e.data.key === key)).toHaveLength(1);
    expect(await registryVersions(env.HEIMDALL_DATA_DIR!)).toHaveLength(6);
  });

  it('sweeps one at a time by the KV lock: a second sweep while one runs skips it, naming the holder', async () => {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let listing!: () => void;
    const listed = new Promise<void>((resolve) => (listing = resolve));
    const first = await natsSweepPorts(runtime);
    // The first sweep's listing stalls on its first page, holding the lease meanwhile.
    const stalled = {
      ...first,
      store: Object.assign(Object.create(store) as S3ObjectStore, {
        async *list(bucket: string, prefix?: string): AsyncIterable<ListedObject> {
          listing();
          await gate;
          yield* store.list(bucket, prefix);
        },
      }),
    };
    const running = sweep(stalled, { bucket: BUCKET, logger });
    await listed;
    const second = await reconcile();
    expect(second).toMatchObject({ held: { owner: expect.stringMatching(/:\d+:/) }, listed: 0, started: [] });
    open();
    expect(await running).toMatchObject({ listed: 7, started: [], skipped: { announced: 6 } });
    expect((await reconcile()).held).toBeUndefined();
  });

  it("takes over a lease whose holder died, and a holder whose lease was taken over stops", async () => {
    const kv = await openKv(observer.nc, 'heimdall_locks');
    await kv.put('test-lock', JSON.stringify({ owner: 'killed', expiresAt: Date.now() - 1 }));
    const lease = await new KvSweepLock(kv, 'test-lock', 'next', 300).acquire();
    expect(lease.kind).toBe('lease');
    // Renewed past its time to live: still held.
    await sleep(600);
    expect(await new KvSweepLock(kv, 'test-lock', 'late', 300).acquire()).toMatchObject({ kind: 'held', owner: 'next' });
    if (lease.kind !== 'lease') return;
    await kv.put('test-lock', JSON.stringify({ owner: 'intruder', expiresAt: Date.now() + 60_000 }));
    await waitFor('the lease to be lost', () => lease.lost.aborted, 5_000);
    // Its release checks the revision: the intruder's lock stays.
    await lease.release();
    expect(await new KvSweepLock(kv, 'test-lock', 'late', 300).acquire()).toMatchObject({ kind: 'held', owner: 'intruder' });
  });

  it('serve sweeps every HEIMDALL_RECONCILE_INTERVAL, two processes taking turns, and starts each lost upload once', async () => {
    const sweeping = { HEIMDALL_RECONCILE_INTERVAL: '2s', HEIMDALL_LOG_LEVEL: 'info', HEIMDALL_RECONCILE_BUCKET: BUCKET };
    const [a, b] = [await serve(['--stages', 'ingest'], sweeping), await serve(['--stages', 'ingest'], sweeping)];
    expect(a.stderr()).toContain(`reconciling bucket ${BUCKET} every 2.00 s`);
    const lost = ['runs/lost 1.pth', 'runs/lost 2.safetensors'];
    for (const [i, key] of lost.entries()) await upload(key, 11 + i);
    const sweeps = () => [a, b].flatMap((w) => w.stderr().split('\n').filter((line) => /"msg":"reconcile: \d+ started of/.test(line)).map((line) => JSON.parse(line) as { started: number }));
    await registered(lost);
    // Two more sweeps after the runs: each upload was started by one sweep only.
    const done = sweeps().length;
    await waitFor('two more sweeps', () => sweeps().length >= done + 2, 30_000);
    expect(sweeps().reduce((sum, s) => sum + s.started, 0)).toBe(2);
    for (const key of lost) expect(observer.of('heimdall.checkpoint.created').filter((e) => e.data.key === key)).toHaveLength(1);
    expect(await registryVersions(env.HEIMDALL_DATA_DIR!)).toHaveLength(8);
  });
});
