/**
 * Reconciliation on the embedded default: the folder store listed, each upload never announced run
 * here through the real ingest function, ingest's marks in the data dir deciding what was announced,
 * a lock file keeping sweeps one at a time. (On S3 and NATS: test/integration/reconcile.test.ts.)
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { ingestHandler } from '../../functions/ingest/handler.ts';
import { registeredEvent } from '../../test/support/events.ts';
import { tempDir } from '../../test/support/temp.ts';
import { loadConfig } from '../config/index.ts';
import { createLogger } from '../logging/index.ts';
import { LocalModelRegistry } from '../registry/local.ts';
import { FsObjectStore } from '../storage/fs.ts';
import { CHECKPOINTS_BUCKET } from '../storage/object-store.ts';
import { runInProcess } from './in-process.ts';
import { embeddedSweepPorts, sweep, type SweepPorts } from './reconcile.ts';
import { FsAnnouncedUploads } from './run-state/announced.ts';
import { FsRunStateStore } from './run-state/fs.ts';
import type { AnyStage } from './stage.ts';
import { FileSweepLock } from './sweep-lock.ts';

const logger = createLogger('silent');
const root = await tempDir('heimdall-reconcile-');

/** Register straight after ingest (what follows ingest is not reconciliation's business), held until `gate` opens when given one. */
function registerStage(gate?: Promise<void>, onStart?: () => void): AnyStage {
  return {
    name: 'register',
    input: 'heimdall.checkpoint.created',
    output: 'heimdall.model.registered',
    handler: async (event) => {
      onStart?.();
      await gate;
      return registeredEvent(event.data.runId, '1');
    },
  };
}

/** A data dir with a folder store; `upload` drops bytes into the checkpoints bucket as a trainer's sync would, with no notification. */
async function embedded(name: string, stage: AnyStage = registerStage()) {
  const dataDir = join(root, name);
  const config = loadConfig({ HEIMDALL_DATA_DIR: dataDir });
  const store = new FsObjectStore(dataDir);
  const options = { stages: [stage], store, registry: new LocalModelRegistry(dataDir), config, logger };
  const ports = embeddedSweepPorts(options, ingestHandler);
  const upload = async (key: string, content = `weights of ${key}`) => {
    const file = join(root, `${name}-upload`);
    await writeFile(file, content);
    return store.putFile(CHECKPOINTS_BUCKET, key, file);
  };
  return { dataDir, store, options, ports, upload, runState: new FsRunStateStore(dataDir), announced: new FsAnnouncedUploads(dataDir) };
}

const reconcile = (ports: SweepPorts, options: { limit?: number; minAgeMs?: number; prefix?: string } = {}) => sweep(ports, { bucket: CHECKPOINTS_BUCKET, logger, ...options });

describe('a sweep of the embedded store', () => {
  it('runs each checkpoint never announced once, through ingest; a second sweep starts none', async () => {
    const { ports, upload, runState, dataDir, options } = await embedded('once');
    await upload('runs/epoch 1.pth');
    await upload('runs/epoch 2.safetensors');
    await upload('runs/notes.txt');
    await upload('runs/epoch 1.pth.parity.safetensors');
    await upload('runs/exported.onnx', 'not an ONNX model');
    // One run `heimdall run` made (stored under its run id, marked by its ingest): announced already.
    const local = join(root, 'local.pth');
    await writeFile(local, 'weights run by hand');
    const byHand = await runInProcess(local, { ...options, runState, announced: new FsAnnouncedUploads(dataDir) });
    expect(byHand.status).toBe('registered');

    const first = await reconcile(ports);
    expect(first.started).toEqual([
      expect.objectContaining({ key: 'runs/epoch 1.pth', kind: 'ran', status: 'registered' }),
      expect.objectContaining({ key: 'runs/epoch 2.safetensors', kind: 'ran', status: 'registered' }),
      expect.objectContaining({ key: 'runs/exported.onnx', kind: 'ran', status: 'failed', error: { stage: 'ingest', code: 'INVALID_MODEL' } }),
    ]);
    expect(first).toMatchObject({ listed: 6, truncated: false, skipped: { announced: 1, ignored: 2, failed: 0 } });
    const runIds = first.started.map((run) => (run.kind === 'ran' ? run.runId : ''));
    expect(new Set(runIds).size).toBe(3);
    for (const runId of runIds.slice(0, 2)) expect(await runState.get(runId)).toMatchObject({ status: 'registered', checkpoint: { bucket: CHECKPOINTS_BUCKET } });

    // Registered or failed, every one is finished: none is started again.
    const second = await reconcile(ports);
    expect(second).toMatchObject({ listed: 6, started: [], skipped: { announced: 3, failed: 1, ignored: 2 } });
    expect((await runState.list()).length).toBe(4);
  });

  it('starts nothing for a run in flight', async () => {
    let open!: () => void;
    let started!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const running = new Promise<void>((resolve) => (started = resolve));
    const { ports, options, runState, dataDir, store } = await embedded('in-flight', registerStage(gate, started));
    const local = join(root, 'in-flight.pth');
    await writeFile(local, 'weights in flight');
    const run = runInProcess(local, { ...options, runState, announced: new FsAnnouncedUploads(dataDir) });
    await running;

    const during = await reconcile(ports);
    expect(during).toMatchObject({ listed: 1, started: [], skipped: { announced: 1 } });
    open();
    expect((await run).status).toBe('registered');
    expect((await runState.list()).length).toBe(1);
    expect(await store.stat(CHECKPOINTS_BUCKET, `${(await run).runId}/in-flight.pth`)).toBeDefined();
  });

  it('starts at most `limit` runs a sweep, in key order; the next sweep goes on', async () => {
    const { ports, upload } = await embedded('limit');
    for (const n of [3, 1, 2]) await upload(`runs/${n}.pt`);
    const first = await reconcile(ports, { limit: 2 });
    expect(first).toMatchObject({ truncated: true, started: [{ key: 'runs/1.pt' }, { key: 'runs/2.pt' }] });
    const second = await reconcile(ports, { limit: 2 });
    expect(second).toMatchObject({ truncated: false, started: [{ key: 'runs/3.pt' }], skipped: { announced: 2 } });
  });

  it('lists only under the prefix, and leaves uploads younger than minAgeMs to a later sweep', async () => {
    const { ports, upload } = await embedded('prefix');
    await upload('runs/2026-11/a.pth');
    await upload('runs/2026-12/b.pth');
    expect(await reconcile(ports, { prefix: 'runs/2026-12', minAgeMs: 60_000 })).toMatchObject({ listed: 1, started: [], skipped: { recent: 1 } });
    expect(await reconcile(ports, { prefix: 'runs/2026-12' })).toMatchObject({ listed: 1, started: [{ key: 'runs/2026-12/b.pth' }] });
  });

  it('one sweep at a time: a second one while the first runs skips, naming the holder; the lock is free after', async () => {
    let open!: () => void;
    let started!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const running = new Promise<void>((resolve) => (started = resolve));
    const { ports, upload, dataDir, options } = await embedded('lock', registerStage(gate, started));
    await upload('runs/a.pth');
    await upload('runs/b.pth');
    const first = reconcile(ports);
    await running;
    // Another process's sweep: its own lock object on the same file.
    const other = { ...embeddedSweepPorts(options, ingestHandler), lock: new FileSweepLock(join(dataDir, 'reconcile.lock'), 'other-process', 60_000) };
    const second = await reconcile(other);
    expect(second).toMatchObject({ held: { owner: expect.stringMatching(/:\d+:/) }, listed: 0, started: [] });
    open();
    expect((await first).started).toHaveLength(2);
    const after = await reconcile(other);
    expect(after.held).toBeUndefined();
    expect(after).toMatchObject({ started: [], skipped: { announced: 2 } });
  });
});

describe('the lock file', () => {
  it('stays held while its holder renews it, and is free once released', async () => {
    const path = join(root, 'locks', 'renewed.lock');
    const holder = await new FileSweepLock(path, 'holder', 200).acquire();
    await sleep(400);
    expect(await new FileSweepLock(path, 'late', 200).acquire()).toMatchObject({ kind: 'held', owner: 'holder' });
    if (holder.kind === 'lease') await holder.release();
    const next = await new FileSweepLock(path, 'late', 200).acquire();
    expect(next.kind).toBe('lease');
    if (next.kind === 'lease') await next.release();
  });

  it('is taken over once expired (its holder was killed), and a holder whose lock was taken loses its lease', async () => {
    const path = join(root, 'locks', 'expired.lock');
    // What a process killed -9 leaves: its last lease, never renewed again.
    await writeFile(path, JSON.stringify({ owner: 'killed', expiresAt: Date.now() - 1 }));
    const taken = await new FileSweepLock(path, 'next', 200).acquire();
    expect(taken.kind).toBe('lease');
    if (taken.kind !== 'lease') return;
    await writeFile(path, JSON.stringify({ owner: 'intruder', expiresAt: Date.now() + 60_000 }));
    await sleep(150);
    expect(taken.lost.aborted).toBe(true);
    await taken.release();
    expect(await new FileSweepLock(path, 'third', 200).acquire()).toMatchObject({ kind: 'held', owner: 'intruder' });
  });
});
