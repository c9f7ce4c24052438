/**
 * MaxDeliver with a process that really dies: a `heimdall serve --stages export` child that SIGKILLs
 * itself on every delivery (the HEIMDALL_TEST_CRASH_STAGE fault-injection hook), restarted each time
 * as a supervisor would, on a real nats-server. After HEIMDALL_MAX_DELIVER deliveries JetStream gives
 * up; its advisory, kept in HEIMDALL_ADVISORIES, becomes the run's `pipeline.failed` with
 * DELIVERY_EXHAUSTED, and the alerts subscriber sends one alert to a real HTTP receiver.
 */
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openKv } from '../../shared/bus/nats/provision.ts';
import { KvRunStateStore } from '../../shared/pipeline/run-state/kv.ts';
import { CHECKPOINTS_BUCKET } from '../../shared/storage/object-store.ts';
import { FsObjectStore } from '../../shared/storage/fs.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { minioNotification, PipelineObserver, startServe, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';
import { startWebhookReceiver } from '../support/webhook-receiver.ts';

const MAX_DELIVER = 3;

let server: NatsServer;
let webhook: Awaited<ReturnType<typeof startWebhookReceiver>>;
let observer: PipelineObserver | undefined;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  [server, webhook] = await Promise.all([startNatsServer(), startWebhookReceiver()]);
});
afterAll(async () => {
  await Promise.all(workers.map(stopServe));
  await observer?.close();
  await Promise.all([server?.stop(), webhook?.close()]);
});

/** Keeps one process of `args` running, as a supervisor (Kubernetes, systemd) does: each time it dies, another starts. */
function supervise(env: Record<string, string>, args: string[]) {
  const deaths: Array<number | string> = [];
  let stopped = false;
  const start = (): void => {
    const worker = startServe(env, args);
    workers.push(worker);
    void worker.exited.then((exit) => {
      if (stopped) return;
      deaths.push(exit);
      start();
    });
  };
  start();
  return {
    deaths,
    stop() {
      stopped = true;
    },
  };
}

describe('a stage whose process dies on every delivery', () => {
  it(`ends in pipeline.failed with DELIVERY_EXHAUSTED after ${MAX_DELIVER} deliveries, with one alert`, async () => {
    const dataDir = join(await tempDir('heimdall-exhausted-'), 'data');
    const env = { NATS_URL: server.url, HEIMDALL_DATA_DIR: dataDir, HEIMDALL_ACK_WAIT_SECONDS: '5', HEIMDALL_MAX_DELIVER: String(MAX_DELIVER), HEIMDALL_ALERT_WEBHOOKS: `${webhook.url}/alerts`, HEIMDALL_ALERT_BACKOFF_MS: '50' };
    const rest = startServe(env, ['--stages', 'ingest,validate,parity,benchmark,register']);
    workers.push(rest);
    await waitFor('the other stages to start', () => rest.stderr().includes('serving'), 60_000);
    const exporter = supervise({ ...env, HEIMDALL_TEST_CRASH_STAGE: 'export' }, ['--stages', 'export']);
    observer = await PipelineObserver.connect(server.url);
    observer.follow();

    const checkpoint = join(dataDir, '..', 'crashes-export.pth');
    await writeSmallCheckpoint(checkpoint, { seed: 61 });
    const info = await new FsObjectStore(dataDir).putFile(CHECKPOINTS_BUCKET, 'runs/crashes-export.pth', checkpoint);
    await observer.notify(minioNotification(CHECKPOINTS_BUCKET, 'runs/crashes-export.pth', info));

    const failed = await waitFor('the run to fail', () => observer!.of('heimdall.pipeline.failed')[0], 120_000).catch((error: Error) => {
      throw new Error(`${error.message}; deaths ${JSON.stringify(exporter.deaths)}; events ${observer!.events.map((e) => e.id).join(', ')}\n${rest.stderr().slice(-3000)}`);
    });
    exporter.stop();
    const runId = observer.of('heimdall.checkpoint.created')[0]!.data.runId;
    expect(failed.data).toMatchObject({ runId, stage: 'export', error: { code: 'DELIVERY_EXHAUSTED' }, attempt: MAX_DELIVER });
    // Each delivery killed its process: it died MAX_DELIVER times, by its own SIGKILL, and never exported.
    expect(exporter.deaths).toEqual(Array(MAX_DELIVER).fill('SIGKILL'));
    expect(observer.of('heimdall.model.exported')).toHaveLength(0);

    // One alert, naming the run, the stage and the code, however many processes share the subscribers' consumer.
    await webhook.waitForRequests(1);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(webhook.accepted()).toEqual([expect.stringMatching(new RegExp(`^Heimdall run ${runId} failed at export: DELIVERY_EXHAUSTED: export did not finish in ${MAX_DELIVER} deliveries`))]);
    expect(observer.of('heimdall.pipeline.failed')).toHaveLength(1);

    // The run is over in KV, and nothing is left pending: the advisory was kept, then handled once.
    const runState = new KvRunStateStore(await openKv(observer.nc, 'heimdall_runs'));
    expect(await runState.get(runId)).toMatchObject({ status: 'failed', error: { stage: 'export', code: 'DELIVERY_EXHAUSTED' } });
    const jsm = await jetstreamManager(observer.nc);
    expect((await jsm.streams.info('HEIMDALL_ADVISORIES')).state.messages).toBe(1);
    await waitFor('the advisory to be acknowledged', () => observer!.idle('HEIMDALL_ADVISORIES', 'heimdall-exhausted'), 10_000);
    expect(await observer.idle('HEIMDALL_EVENTS', 'heimdall-export')).toBe(true);
  }, 180_000);
});
