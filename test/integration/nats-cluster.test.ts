/**
 * The pipeline on a real three-node JetStream cluster (HEIMDALL_NATS_REPLICAS=3): streams, consumers
 * and KV replicated on every node, `heimdall serve` workers connected with all three URLs, and the
 * servers stopped, killed and restarted under them. Results published, acks and run-state writes
 * made during a leader election are sent again (shared/bus/nats/transient.ts), so runs complete
 * exactly once.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NatsEventBus } from '../../shared/bus/nats/event-bus.ts';
import { openKv } from '../../shared/bus/nats/provision.ts';
import { ErrorCodes, HeimdallError } from '../../shared/errors/index.ts';
import { createEvent, runIdOf } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { failureEvent } from '../../shared/pipeline/failure.ts';
import { KvRunStateStore } from '../../shared/pipeline/run-state/kv.ts';
import { recordEvent, recordStageStart } from '../../shared/pipeline/run-state/run-state.ts';
import { CHECKPOINTS_BUCKET } from '../../shared/storage/object-store.ts';
import { FsObjectStore } from '../../shared/storage/fs.ts';
import { startNatsCluster, type NatsCluster } from '../support/nats-cluster.ts';
import { minioNotification, PipelineObserver, registryVersions, startServe, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');
const REPLICAS = 3;

let cluster: NatsCluster;
let dir: string;
let dataDir: string;
let env: Record<string, string>;
let observer: PipelineObserver;
let runState: KvRunStateStore;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  [cluster, dir] = await Promise.all([startNatsCluster(), tempDir('heimdall-nats-cluster-')]);
  dataDir = join(dir, 'data');
  env = { NATS_URL: cluster.url, HEIMDALL_NATS_REPLICAS: String(REPLICAS), HEIMDALL_DATA_DIR: dataDir, HEIMDALL_ACK_WAIT_SECONDS: '10' };
  workers.push(startServe(env), startServe(env));
  // Generous: under the full suite on two cores, two workers provisioning 3-replica streams took over a minute.
  await waitFor('two workers', () => workers.every((w) => w.stderr().includes('serving')), 180_000).catch((error: Error) => {
    throw new Error(`${error.message}; workers said:\n${workers.map((w) => w.stderr().slice(-2000)).join('\n---\n')}`);
  });
  observer = await PipelineObserver.connect(cluster.url);
  observer.follow();
  runState = new KvRunStateStore(await openKv(observer.nc, 'heimdall_runs', REPLICAS));
}, 240_000);
// A test that failed with a node down must not leave the next one without a quorum.
afterEach(async () => {
  for (const node of cluster.nodes.filter((n) => !n.running)) await cluster.restart(node.name);
});
afterAll(async () => {
  await Promise.all(workers.map(stopServe));
  await observer?.close();
  await cluster?.close();
});

/** Uploads a checkpoint into the bucket, then announces it as MinIO does. */
async function upload(key: string, path: string): Promise<void> {
  const info = await new FsObjectStore(dataDir).putFile(CHECKPOINTS_BUCKET, key, path);
  await observer.notify(minioNotification(CHECKPOINTS_BUCKET, key, info));
}

const runOf = (key: string) => observer.of('heimdall.checkpoint.created').find((e) => e.data.key === key)?.data.runId;
const terminal = (runId: string) => observer.of('heimdall.model.registered', runId).length + observer.of('heimdall.pipeline.failed', runId).length > 0;

/** Waits until every run of `keys` has ended; on a timeout, says which did not and what the workers said. */
async function allTerminal(keys: readonly string[], timeoutMs: number): Promise<string[]> {
  return waitFor(`${keys.length} runs to end`, () => {
    const runs = keys.map(runOf);
    return runs.every((r) => r !== undefined && terminal(r)) && (runs as string[]);
  }, timeoutMs).catch((error: Error) => {
    const open = keys.filter((k) => !runOf(k) || !terminal(runOf(k)!));
    const said = workers.map((w, i) => `worker ${i} (exit ${w.child.exitCode ?? w.child.signalCode ?? 'running'}):\n${w.stderr().slice(-2000)}`).join('\n');
    throw new Error(`${error.message}: not ended ${open.join(', ')}\n${said}`);
  });
}

describe('heimdall serve on a three-node JetStream cluster', () => {
  it('provisions every stream, consumer and KV bucket with three replicas', async () => {
    const jsm = await jetstreamManager(observer.nc);
    for (const stream of ['HEIMDALL_EVENTS', 'HEIMDALL_MINIO', 'HEIMDALL_ADVISORIES', 'KV_heimdall_runs', 'KV_heimdall_ingest']) {
      const info = await jsm.streams.info(stream);
      expect(info.config.num_replicas, stream).toBe(REPLICAS);
      expect(info.cluster?.replicas, stream).toHaveLength(REPLICAS - 1);
    }
    const consumer = await jsm.consumers.info('HEIMDALL_EVENTS', 'heimdall-export');
    expect(consumer.cluster?.replicas).toHaveLength(REPLICAS - 1);
  });

  it('completes a run once when the HEIMDALL_EVENTS leader is stopped in the middle of its export', async () => {
    // ConvNeXt-tiny (113 MB) takes a few seconds to export: time to stop the leader inside it.
    const path = join(dir, 'tiny.pth');
    await promisify(execFile)(process.execPath, [heimdall, 'sample', '--variant', 'tiny', '--out', path]);
    await upload('runs/leader-stopped.pth', path);
    const created = await waitFor('ingest', () => observer.of('heimdall.checkpoint.created').find((e) => e.data.key === 'runs/leader-stopped.pth'));
    await waitFor('export to start', async () => (await runState.get(created.data.runId))?.stages.export?.status === 'running', 60_000);
    const leader = await cluster.streamLeader('HEIMDALL_EVENTS');
    await cluster.stop(leader);
    expect(observer.of('heimdall.model.exported', created.data.runId)).toHaveLength(0);

    const [runId] = await allTerminal(['runs/leader-stopped.pth'], 180_000);
    expect(await cluster.streamLeader('HEIMDALL_EVENTS')).not.toBe(leader);
    expect(observer.of('heimdall.model.registered', runId)).toHaveLength(1);
    const registered = observer.of('heimdall.model.registered', runId)[0]!;
    expect((await registryVersions(dataDir)).filter((v) => v.tags.sha256 === registered.data.onnx.sha256)).toHaveLength(1);
    expect(await runState.get(runId!)).toMatchObject({ status: 'registered', stages: { export: { status: 'done' } } });
  }, 300_000);

  it('registers a burst of 10 checkpoints, none twice, with a node killed and restarted during it', async () => {
    const keys = Array.from({ length: 10 }, (_, i) => `burst/ckpt-${i}.pth`);
    await Promise.all(
      keys.map(async (key, i) => {
        const path = join(dir, `burst-${i}.pth`);
        await writeSmallCheckpoint(path, { seed: 200 + i });
        await upload(key, path);
      }),
    );
    // Killed while the runs are in flight: the stream leader, where the most is in the balance.
    await waitFor('the burst under way', () => keys.filter(runOf).length >= 3, 60_000);
    const victim = await cluster.streamLeader('HEIMDALL_EVENTS');
    await cluster.kill(victim);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    await cluster.restart(victim);

    const runs = await allTerminal(keys, 240_000);
    for (const runId of runs) {
      expect(observer.of('heimdall.model.registered', runId), runId).toHaveLength(1);
      expect((await runState.get(runId))?.status, runId).toBe('registered');
    }
    const shas = new Set(runs.map((r) => observer.of('heimdall.model.registered', r)[0]!.data.onnx.sha256));
    const versions = (await registryVersions(dataDir)).filter((v) => shas.has(v.tags.sha256!));
    expect(versions).toHaveLength(10);
    expect(new Set(versions.map((v) => v.tags.sha256)).size).toBe(10);
    // No event twice in the stream: each result was stored once, however often it was sent.
    const ids = observer.events.map((e) => e.id);
    expect(ids.length).toBe(new Set(ids).size);
  }, 300_000);

  it('keeps the KV run state readable and writable across leader changes of its stream (stopped, then killed)', async () => {
    const runId = runIdOf('ab'.repeat(32));
    const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: CHECKPOINTS_BUCKET, key: 'runs/kv.pth', size: 1, etag: 'e', runId } });
    const before = await recordEvent(runState, created);
    const leader = await cluster.streamLeader('KV_heimdall_runs');
    await cluster.stop(leader);

    expect(await runState.get(runId)).toEqual(before);
    const after = await recordStageStart(runState, runId, 'export');
    expect(after.stages.export).toMatchObject({ status: 'running', attempts: 1 });
    expect(await cluster.streamLeader('KV_heimdall_runs')).not.toBe(leader);
    expect(await runState.get(runId)).toEqual(after);

    // The stopped node catches up when it comes back: every replica current again.
    await cluster.restart(leader);
    const jsm = await jetstreamManager(observer.nc);
    await waitFor('the restarted node to catch up', async () => {
      const { cluster: replication } = await jsm.streams.info('KV_heimdall_runs');
      return replication?.replicas?.length === REPLICAS - 1 && replication.replicas.every((r) => r.current);
    }, 30_000);

    // A killed leader hands nothing over: the next write meets seconds without one, and is sent again until it lands.
    const killed = await cluster.streamLeader('KV_heimdall_runs');
    await cluster.kill(killed);
    const done = await recordEvent(runState, failureEvent(runId, 'export', new HeimdallError(ErrorCodes.IO_ERROR, 'disk full'), 2));
    expect(done).toMatchObject({ status: 'failed', stages: { export: { status: 'failed', attempts: 2 } } });
    expect(await runState.get(runId)).toEqual(done);
  }, 120_000);

  it('stores a result published while the stream elects a new leader, once however often it is sent', async () => {
    const bus = new NatsEventBus(observer.nc, createLogger('silent'));
    const runId = runIdOf('cd'.repeat(32));
    const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: CHECKPOINTS_BUCKET, key: 'runs/election.pth', size: 1, etag: 'e', runId } });
    const leader = await cluster.streamLeader('HEIMDALL_EVENTS');
    await cluster.kill(leader);
    // Sent into the election: "no responders" or a timeout until a new leader takes it.
    expect(await bus.publish(created)).toBe(true);
    expect(await cluster.streamLeader('HEIMDALL_EVENTS')).not.toBe(leader);
    // A stage done again after a redelivery publishes the same id: dropped as a duplicate.
    expect(await bus.publish(created)).toBe(false);
    await waitFor('the event', () => observer.of('heimdall.checkpoint.created', runId).length > 0, 30_000);
    await cluster.restart(leader);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(observer.of('heimdall.checkpoint.created', runId)).toHaveLength(1);
    await bus.close();
  }, 120_000);
});
