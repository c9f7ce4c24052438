import { createHash } from 'node:crypto';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { openKv } from '../../shared/bus/nats/provision.ts';
import { EVENTS_STREAM } from '../../shared/bus/nats/subjects.ts';
import { KvRunStateStore } from '../../shared/pipeline/run-state/kv.ts';
import { CHECKPOINTS_BUCKET } from '../../shared/storage/object-store.ts';
import { FsObjectStore } from '../../shared/storage/fs.ts';
import { startNatsCluster, type NatsCluster } from '../support/nats-cluster.ts';
import { minioNotification, PipelineObserver, registryVersions, startServe, stopServe, type WorkerProcess } from '../support/nats-pipeline.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';

/**
 * The chaos soak: `npm run soak -- --checkpoints N --minutes M [--seed S] [--keep]`. A three-node
 * JetStream cluster (HEIMDALL_NATS_REPLICAS=3), three `heimdall serve` processes (two with every
 * stage, one with some), N tiny checkpoints uploaded to the embedded folder store and announced at
 * intervals, and a bounded chaos loop: kill -9 a random worker (a supervisor starts it again), kill
 * -9 and restart a random NATS node, stop the HEIMDALL_EVENTS leader and bring it back; one action
 * at a time, never two nodes down. Then it waits until every run has ended or the time is up, and
 * prints the outcome: versions registered, duplicates, runs stuck or failed, the actions taken.
 * Exit status 0 only for N versions, no duplicate, nothing stuck or failed. Not part of `npm test`.
 */

const USAGE = 'usage: npm run soak -- [--checkpoints N] [--minutes M] [--seed S] [--keep]';
const REPLICAS = 3;
/** Worker processes and the stages each serves (undefined: all). */
const WORKERS: ReadonlyArray<readonly string[] | undefined> = [undefined, undefined, ['--stages', 'export,parity,register']];
/** Chaos stops once this share of the time is spent, so the last redeliveries (after the ack wait) can land. */
const CHAOS_SHARE = 0.6;
const ACK_WAIT_SECONDS = 10;

function options() {
  const { values } = parseArgs({
    options: {
      checkpoints: { type: 'string', default: '30' },
      minutes: { type: 'string', default: '10' },
      seed: { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const checkpoints = Number(values.checkpoints);
  const minutes = Number(values.minutes);
  const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 0x7fffffff);
  if (!Number.isInteger(checkpoints) || checkpoints < 1 || !(minutes > 0) || !Number.isInteger(seed)) throw new Error(`--checkpoints must be a positive integer, --minutes a positive number, --seed an integer\n${USAGE}`);
  return { checkpoints, minutes, seed, keep: values.keep };
}

/** A small deterministic PRNG (mulberry32): the same --seed takes the same actions. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const started = performance.now();
const log = (line: string) => console.log(`[${((performance.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}`);

/** Worker processes kept running as a supervisor would: one that dies is started again. */
class Supervisor {
  readonly processes: WorkerProcess[] = [];
  private readonly current: WorkerProcess[] = [];
  private stopping = false;
  restarts = 0;

  constructor(private readonly env: Record<string, string>) {
    WORKERS.forEach((_, slot) => this.start(slot));
  }

  private start(slot: number): void {
    const worker = startServe(this.env, WORKERS[slot] ?? []);
    this.processes.push(worker);
    this.current[slot] = worker;
    void worker.exited.then(async (exit) => {
      if (this.stopping) return;
      this.restarts++;
      log(`worker ${slot} exited (${exit}); starting another`);
      await sleep(1000);
      if (!this.stopping) this.start(slot);
    });
  }

  async ready(): Promise<void> {
    while (!this.current.every((w) => w.stderr().includes('serving'))) await sleep(200);
  }

  /** kill -9 of a running worker. */
  kill(slot: number): number | undefined {
    const worker = this.current[slot]!;
    worker.child.kill('SIGKILL');
    return worker.child.pid;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.current.map(stopServe));
  }
}

type Action = 'kill-worker' | 'restart-node' | 'stop-leader';
const ACTIONS: readonly Action[] = ['kill-worker', 'restart-node', 'stop-leader'];

async function chaos(action: Action, cluster: NatsCluster, workers: Supervisor, next: () => number): Promise<string> {
  switch (action) {
    case 'kill-worker': {
      const slot = Math.floor(next() * WORKERS.length);
      const pid = workers.kill(slot);
      return `kill -9 worker ${slot} (pid ${pid})`;
    }
    case 'restart-node': {
      const node = cluster.nodes[Math.floor(next() * cluster.nodes.length)]!.name;
      await cluster.kill(node);
      await cluster.restart(node);
      return `kill -9 and restart NATS node ${node}`;
    }
    case 'stop-leader': {
      const leader = await cluster.streamLeader(EVENTS_STREAM);
      await cluster.stop(leader);
      await sleep(3000);
      const successor = await cluster.streamLeader(EVENTS_STREAM);
      await cluster.restart(leader);
      return `stop the ${EVENTS_STREAM} leader ${leader} (new leader ${successor}), restart it`;
    }
  }
}

async function main(): Promise<number> {
  const { checkpoints, minutes, seed, keep } = options();
  const deadline = performance.now() + minutes * 60_000;
  const chaosUntil = performance.now() + minutes * 60_000 * CHAOS_SHARE;
  const next = random(seed);
  const dir = await mkdtemp(join(tmpdir(), 'heimdall-soak-'));
  const dataDir = join(dir, 'data');
  log(`soak: ${checkpoints} checkpoints, ${minutes} min, seed ${seed}, in ${dir}`);
  const cluster = await startNatsCluster();
  log(`three-node JetStream cluster up: ${cluster.url}`);
  const env = { NATS_URL: cluster.url, HEIMDALL_NATS_REPLICAS: String(REPLICAS), HEIMDALL_DATA_DIR: dataDir, HEIMDALL_ACK_WAIT_SECONDS: String(ACK_WAIT_SECONDS) };
  const workers = new Supervisor(env);
  let observer: PipelineObserver | undefined;
  try {
    await workers.ready();
    log(`${WORKERS.length} workers serving (${WORKERS.map((w) => w?.[1] ?? 'all stages').join('; ')})`);
    observer = await PipelineObserver.connect(cluster.url);
    observer.follow();
    const runState = new KvRunStateStore(await openKv(observer.nc, 'heimdall_runs', REPLICAS));
    const store = new FsObjectStore(dataDir);

    // Uploads, spread over the first part of the chaos window.
    const runIds: string[] = [];
    const intervalMs = Math.min(5000, Math.max(200, (minutes * 60_000 * CHAOS_SHARE * 0.5) / checkpoints));
    const uploads = (async () => {
      for (let i = 0; i < checkpoints; i++) {
        const path = join(dir, `ckpt-${i}.pth`);
        await writeSmallCheckpoint(path, { seed: seed + i });
        runIds.push(createHash('sha256').update(await readFile(path)).digest('hex').slice(0, 16));
        const info = await store.putFile(CHECKPOINTS_BUCKET, `soak/ckpt-${i}.pth`, path);
        await observer!.notify(minioNotification(CHECKPOINTS_BUCKET, `soak/ckpt-${i}.pth`, info));
        await sleep(intervalMs);
      }
      log(`all ${checkpoints} checkpoints uploaded and announced`);
    })();

    const ended = async () => (await Promise.all(runIds.map((r) => runState.get(r).catch(() => undefined)))).filter((s) => s && s.status !== 'running');
    const actions: string[] = [];
    let lastProgress = 0;
    const progress = async () => {
      const states = await ended();
      const registered = states.filter((s) => s!.status === 'registered').length;
      log(`progress: ${runIds.length} uploaded, ${observer!.of('heimdall.checkpoint.created').length} started, ${registered} registered, ${states.length - registered} failed, ${actions.length} chaos actions`);
      lastProgress = performance.now();
      return states.length;
    };

    // The chaos loop: one action every 10-25 s while uploads are going and runs are in flight.
    let finished = 0;
    while (performance.now() < deadline) {
      await sleep(10_000 + next() * 15_000);
      finished = await progress();
      const uploading = runIds.length < checkpoints;
      if (!uploading && finished === checkpoints) break;
      if (performance.now() >= chaosUntil) continue;
      const action = ACTIONS[Math.floor(next() * ACTIONS.length)]!;
      const what = await chaos(action, cluster, workers, next);
      actions.push(what);
      log(`chaos ${actions.length}: ${what}`);
    }
    await uploads;
    if (performance.now() - lastProgress > 1000) finished = await progress();

    // The outcome, from the registry (versions), the event stream (duplicates) and KV (run state).
    const states = new Map(runIds.map((r) => [r, undefined as string | undefined]));
    for (const state of await runState.list()) if (states.has(state.runId)) states.set(state.runId, state.status);
    const versions = await registryVersions(dataDir);
    const shas = new Map<string, number>();
    for (const v of versions) shas.set(v.tags.sha256!, (shas.get(v.tags.sha256!) ?? 0) + 1);
    const duplicates = [...shas.values()].reduce((sum, n) => sum + n - 1, 0);
    const registeredTwice = runIds.filter((r) => observer!.of('heimdall.model.registered', r).length > 1);
    const stuck = [...states].filter(([, s]) => s !== 'registered' && s !== 'failed').map(([r]) => r);
    const failed = [...states].filter(([, s]) => s === 'failed').map(([r]) => r);
    const ok = versions.length === checkpoints && duplicates === 0 && registeredTwice.length === 0 && stuck.length === 0 && failed.length === 0;
    console.log('');
    console.log(`outcome (${ok ? 'PASS' : 'FAIL'}), ${((performance.now() - started) / 60_000).toFixed(1)} min, seed ${seed}:`);
    console.log(`  checkpoints ${checkpoints}, versions registered ${versions.length}, duplicate versions ${duplicates}, runs registered twice ${registeredTwice.length}`);
    console.log(`  runs stuck ${stuck.length}${stuck.length ? ` (${stuck.join(', ')})` : ''}, runs failed ${failed.length}${failed.length ? ` (${failed.join(', ')})` : ''}`);
    console.log(`  worker restarts after a kill ${workers.restarts}`);
    console.log(`  chaos actions (${actions.length}): ${actions.map((a, i) => `\n    ${i + 1}. ${a}`).join('')}`);
    if (!ok) for (const [i, w] of workers.processes.entries()) console.log(`--- worker process ${i} (pid ${w.child.pid}) stderr tail:\n${w.stderr().slice(-2000)}`);
    return ok ? 0 : 1;
  } finally {
    await workers.stop();
    await observer?.close();
    await cluster.close();
    if (!keep) await rm(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main().catch((error: unknown) => {
  console.error(`soak: ${(error as Error).stack ?? String(error)}`);
  return 1;
});
