/**
 * Stopping and cleaning up, as a user meets it (DESIGN §6): Ctrl-C or SIGTERM during `heimdall
 * export` and `heimdall run` leaves nothing half-written and a run record saying ABORTED; `--out`
 * never replaces anything but a regular file; the embedded store keeps its own copy of a checkpoint
 * under any legal file name; `heimdall serve` stops within its grace period with NATS gone, and a
 * worker whose consumer vanishes provisions it again instead of going quiet.
 */
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RunReport } from '../../shared/pipeline/report.ts';
import type { RunState } from '../../shared/pipeline/run-state/run-state.ts';
import { CHECKPOINTS_BUCKET } from '../../shared/storage/object-store.ts';
import { FsObjectStore } from '../../shared/storage/fs.ts';
import { endedBy, heimdallRun, spawnHeimdall } from '../support/heimdall-cli.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { minioNotification, PipelineObserver, startServe, stopServe, waitFor, type WorkerProcess } from '../support/nats-pipeline.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');

let dir: string;
/** A ConvNeXt-tiny checkpoint (113 MB): its export takes long enough to be stopped midway. */
let tiny: string;
beforeAll(async () => {
  dir = await tempDir('heimdall-stop-');
  tiny = join(dir, 'tiny.pth');
  await promisify(execFile)(process.execPath, [heimdall, 'sample', '--variant', 'tiny', '--out', tiny]);
}, 120_000);

/** Every file under `root`, relative (hidden ones too). */
async function filesUnder(root: string): Promise<string[]> {
  return ((await readdir(root, { recursive: true }).catch(() => [])) as string[]).sort();
}

describe('heimdall export, stopped', () => {
  it('on Ctrl-C mid-write: exits 130, leaves no .partial, and the previous model where it was', async () => {
    const folder = join(dir, 'export-sigint');
    await mkdir(folder);
    const out = join(folder, 'model.onnx');
    await writeFile(out, 'the previous model');
    const exporting = spawnHeimdall(['export', tiny, '--out', out]);
    // The weights are being written once the temporary exists.
    await waitFor('the partial model', () => existsSync(`${out}.partial`), 60_000);
    exporting.child.kill('SIGINT');
    const exit = await exporting.exited;
    expect(endedBy(exit, 'SIGINT'), JSON.stringify(exit)).toBe(true);
    expect(exporting.stderr()).toMatch(/^error: ABORTED: export of .*tiny\.pth stopped by SIGINT; .*model\.onnx was not written$/m);
    expect(exporting.stdout()).toBe('');
    expect(await filesUnder(folder)).toEqual(['model.onnx']);
    expect(await readFile(out, 'utf8')).toBe('the previous model');
  }, 90_000);

  it('refuses an --out that is a FIFO, a directory or a link to a device, before any work, and leaves it as it was', async () => {
    const folder = join(dir, 'export-not-files');
    await mkdir(join(folder, 'a-directory.onnx'), { recursive: true });
    execFileSync('mkfifo', [join(folder, 'fifo.onnx')]);
    await symlink('/dev/full', join(folder, 'full.onnx'));
    for (const [name, kind] of [['fifo.onnx', 'a FIFO'], ['a-directory.onnx', 'a directory'], ['full.onnx', 'a symbolic link to a character device']]) {
      const run = spawnHeimdall(['export', tiny, '--out', join(folder, name!)]);
      const exit = await run.exited;
      expect(exit.code, name).toBe(1);
      expect(run.stderr()).toBe(`error: NOT_A_FILE: ${join(folder, name!)} is ${kind}, not a regular file: refusing to replace it\n`);
    }
    expect((await lstat(join(folder, 'fifo.onnx'))).isFIFO()).toBe(true);
    expect((await lstat(join(folder, 'full.onnx'))).isSymbolicLink()).toBe(true);
    expect((await lstat('/dev/full')).isCharacterDevice()).toBe(true);
    expect(await filesUnder(folder)).toEqual(['a-directory.onnx', 'fifo.onnx', 'full.onnx']);
  }, 60_000);
});

describe('heimdall run, stopped', () => {
  it('on SIGTERM: exits 143, removes its scratch dir and partial files, and records the run as failed with ABORTED', async () => {
    const workdir = join(dir, 'run-sigterm');
    // A private temporary dir: the run's scratch (heimdall-run-*) is made there, and must be gone after.
    const tmp = join(dir, 'run-sigterm-tmp');
    await mkdir(tmp);
    const run = spawnHeimdall(['run', tiny, '--workdir', workdir, '--json'], { TMPDIR: tmp });
    // Export starts as soon as the checkpoint is announced.
    await waitFor('the ingest line', () => /ingest +checkpoint/.test(run.stdout()), 60_000);
    const sent = Date.now();
    run.child.kill('SIGTERM');
    const exit = await run.exited;
    expect(endedBy(exit, 'SIGTERM'), JSON.stringify(exit)).toBe(true);
    // The stage in flight has a grace period (3 s) to notice, then the run is given up on.
    expect(exit.at - sent).toBeLessThan(8000);

    const report = JSON.parse(run.stdout().trim().split('\n').at(-1)!) as RunReport;
    expect(report).toMatchObject({ status: 'failed', error: { code: 'ABORTED', message: expect.stringContaining('stopped by SIGTERM') } });
    expect(run.stderr()).toMatch(new RegExp(`^error: ABORTED: run ${report.runId} failed at ${report.error!.stage}: run of .*tiny\\.pth stopped by SIGTERM$`, 'm'));
    const record = JSON.parse(await readFile(join(workdir, 'runs', `${report.runId}.json`), 'utf8')) as RunState;
    expect(record).toMatchObject({ status: 'failed', error: { code: 'ABORTED' } });
    expect(Object.values(record.stages).map((s) => s.status)).not.toContain('running');
    // `heimdall status` says so too (exit 1: the run failed).
    const status = await promisify(execFile)(process.execPath, [heimdall, 'status', report.runId], { env: { ...process.env, HEIMDALL_DATA_DIR: workdir } }).catch((e: { code: number; stdout: string }) => e);
    expect(status).toMatchObject({ code: 1, stdout: expect.stringMatching(new RegExp(`run ${report.runId}: failed[\\s\\S]*error: ABORTED`)) });

    expect((await filesUnder(tmp)).filter((f) => f.startsWith('heimdall-run-'))).toEqual([]);
    const everything = [...(await filesUnder(tmp)), ...(await filesUnder(workdir))];
    expect(everything.filter((f) => f.includes('.partial'))).toEqual([]);
    expect(await filesUnder(join(workdir, 'buckets/.tmp'))).toEqual([]);
  }, 90_000);
});

describe('the embedded store under heimdall run', () => {
  it('ingests a 244-character file name, keeps its own copy, and leaves no temporaries on a rerun', async () => {
    const workdir = join(dir, 'store');
    const checkpoint = join(dir, `${'epoch-12-val-loss-0.0123-'.repeat(9)}${'x'.repeat(15)}.pth`);
    expect(checkpoint.split('/').at(-1)).toHaveLength(244);
    await writeSmallCheckpoint(checkpoint);
    const first = await heimdallRun(checkpoint, workdir);
    expect(first.report, first.stderr).toMatchObject({ status: 'registered', registry: { created: true } });
    const again = await heimdallRun(checkpoint, workdir);
    expect(again.report).toMatchObject({ status: 'registered', registry: { created: false } });
    const files = await filesUnder(join(workdir, 'buckets'));
    expect(files.filter((f) => f.includes('.partial') || f.endsWith('.meta.json'))).toEqual([]);
    expect(await filesUnder(join(workdir, 'buckets/.tmp'))).toEqual([]);

    // Editing the source afterwards does not touch the stored checkpoint: it still hashes to its run id.
    await writeFile(checkpoint, 'overwritten by the next epoch');
    const { runId } = first.report;
    const stored = await new FsObjectStore(workdir).fetchFile(CHECKPOINTS_BUCKET, `${runId}/${checkpoint.split('/').at(-1)}`);
    const sha256 = createHash('sha256').update(await readFile(stored.path)).digest('hex');
    expect(sha256.slice(0, 16)).toBe(runId);
  }, 120_000);
});

describe('heimdall serve, stopped', () => {
  let server: NatsServer | undefined;
  let workers: WorkerProcess[] = [];
  let observer: PipelineObserver | undefined;
  afterEach(async () => {
    for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
    await Promise.all(workers.map((w) => w.exited));
    workers = [];
    await observer?.close().catch(() => undefined);
    observer = undefined;
    await server?.stop();
    server = undefined;
  });

  /** A nats-server and one `heimdall serve` on it, with a 5 s ack wait: the grace period on stop. */
  async function serving(name: string) {
    server = await startNatsServer();
    const dataDir = join(dir, name);
    const worker = startServe({ NATS_URL: server.url, HEIMDALL_DATA_DIR: dataDir, HEIMDALL_ACK_WAIT_SECONDS: '5' });
    workers.push(worker);
    await waitFor('workers to start', () => worker.stderr().includes('serving'), 60_000);
    observer = await PipelineObserver.connect(server.url);
    observer.follow();
    const store = new FsObjectStore(dataDir);
    const upload = async (key: string, path: string) => observer!.notify(minioNotification(CHECKPOINTS_BUCKET, key, await store.putFile(CHECKPOINTS_BUCKET, key, path)));
    return { worker, upload, observer };
  }
  const GRACE_MS = 5000;
  /** Past the grace period: the hand-back (1 s), the drain deadline (2 s), and process start-up slack. */
  const MARGIN_MS = 4000;

  it('exits within its grace period on SIGTERM when the NATS server has gone away', async () => {
    const { worker } = await serving('serve-nats-gone');
    await server!.stop();
    server = undefined;
    await waitFor('the disconnect to be noticed', () => worker.stderr().includes('nats disconnect'), 10_000);
    const sent = Date.now();
    const exit = await Promise.race([stopServe(worker), new Promise((resolve) => setTimeout(() => resolve('still running'), GRACE_MS + MARGIN_MS))]);
    const tookMs = Date.now() - sent;
    console.log(`serve exit after SIGTERM with NATS gone, idle: ${tookMs} ms`);
    expect(exit).toBe(0);
    expect(tookMs).toBeLessThan(GRACE_MS + MARGIN_MS);
    expect(worker.stderr()).toContain('draining');
  }, 90_000);

  it('exits within its grace period with a message in flight when NATS goes away mid-stage', async () => {
    const { worker, upload, observer } = await serving('serve-nats-gone-busy');
    await upload('runs/tiny.pth', tiny);
    await waitFor('export to be under way', () => observer.of('heimdall.checkpoint.created').length > 0, 60_000);
    await observer.close();
    await server!.stop();
    server = undefined;
    const sent = Date.now();
    const exit = await Promise.race([stopServe(worker), new Promise((resolve) => setTimeout(() => resolve('still running'), GRACE_MS + MARGIN_MS))]);
    const tookMs = Date.now() - sent;
    console.log(`serve exit after SIGTERM with NATS gone, export in flight: ${tookMs} ms`);
    expect(exit).toBe(0);
    expect(tookMs).toBeLessThan(GRACE_MS + MARGIN_MS);
  }, 120_000);

  it('keeps working when its consumer is deleted under it: the worker provisions it again, serve never dies', async () => {
    const { worker, upload, observer } = await serving('serve-consumer-deleted');
    const jsm = await jetstreamManager(observer.nc);
    await jsm.consumers.delete('HEIMDALL_EVENTS', 'heimdall-export');
    const small = join(dir, 'after-delete.pth');
    await writeSmallCheckpoint(small, { seed: 11 });
    await upload('runs/after-delete.pth', small);
    await waitFor('the run to be registered', () => observer.of('heimdall.model.registered').length > 0, 90_000);
    expect(worker.child.exitCode).toBeNull();
    expect(worker.stderr()).toMatch(/consumer failed; consuming again/);
    expect((await jsm.consumers.info('HEIMDALL_EVENTS', 'heimdall-export')).num_ack_pending).toBe(0);
    await rm(small, { force: true });
  }, 120_000);
});
