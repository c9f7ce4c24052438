import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { registerStage } from '../../test/support/events.ts';
import { tempDir } from '../../test/support/temp.ts';
import { loadConfig } from '../config/index.ts';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { createLogger } from '../logging/index.ts';
import { LocalModelRegistry } from '../registry/local.ts';
import { FsObjectStore } from '../storage/fs.ts';
import { ABORT_GRACE_MS, runInProcess } from './in-process.ts';
import { FsRunStateStore } from './run-state/fs.ts';
import type { AnyStage, StageContext } from './stage.ts';

let dir: string;
let checkpoint: string;
beforeAll(async () => {
  dir = await tempDir('heimdall-in-process-');
  checkpoint = join(dir, 'epoch-3.pth');
  await writeFile(checkpoint, 'checkpoint bytes');
});

/**
 * An export stage that writes a partial file into its scratch dir, reports that it started, then
 * either stops when told (its context's signal) or carries on regardless.
 */
function exportStage(honoursSignal: boolean, started: (ctx: StageContext) => void): AnyStage {
  return {
    name: 'export',
    input: 'heimdall.checkpoint.created',
    output: 'heimdall.model.exported',
    handler: async (_event, ctx) => {
      await writeFile(join(ctx.scratchDir, 'model.onnx.partial'), 'half a model');
      started(ctx);
      await sleep(ABORT_GRACE_MS * 3, undefined, honoursSignal ? { signal: ctx.signal } : {});
      throw new Error('not reached in these tests');
    },
  };
}

async function stoppedRun(name: string, honoursSignal: boolean) {
  const dataDir = join(dir, name);
  const runState = new FsRunStateStore(dataDir);
  const controller = new AbortController();
  let scratch = '';
  const stage = exportStage(honoursSignal, (ctx) => {
    scratch = ctx.scratchDir;
    controller.abort(new HeimdallError(ErrorCodes.ABORTED, 'run of epoch-3.pth stopped by SIGTERM'));
  });
  const started = Date.now();
  const report = await runInProcess(checkpoint, {
    stages: [stage],
    store: new FsObjectStore(dataDir),
    registry: new LocalModelRegistry(dataDir),
    config: loadConfig({ HEIMDALL_DATA_DIR: dataDir }),
    logger: createLogger('silent'),
    runState,
    signal: controller.signal,
  });
  return { report, tookMs: Date.now() - started, scratch, record: await runState.get(report.runId) };
}

describe('runInProcess, stopped', () => {
  it('ends a run whose stage stops when told with ABORTED, recorded, its scratch dir gone', async () => {
    const { report, tookMs, scratch, record } = await stoppedRun('honours', true);
    expect(report).toMatchObject({ status: 'failed', error: { stage: 'export', code: 'ABORTED', message: 'run of epoch-3.pth stopped by SIGTERM' } });
    expect(report.events.map((e) => e.type)).toEqual(['heimdall.checkpoint.created', 'heimdall.pipeline.failed']);
    expect(record).toMatchObject({ status: 'failed', error: { code: 'ABORTED' }, stages: { export: { status: 'failed' } } });
    expect(scratch).not.toBe('');
    expect(existsSync(scratch)).toBe(false);
    expect(tookMs).toBeLessThan(ABORT_GRACE_MS);
  });

  it('gives up on a stage that ignores the stop after the grace period: the same outcome, bounded', async () => {
    const { report, tookMs, scratch, record } = await stoppedRun('ignores', false);
    expect(report).toMatchObject({ status: 'failed', error: { stage: 'export', code: 'ABORTED' } });
    expect(record).toMatchObject({ status: 'failed', error: { code: 'ABORTED' }, stages: { export: { status: 'failed' } } });
    expect(existsSync(scratch)).toBe(false);
    expect(tookMs).toBeGreaterThanOrEqual(ABORT_GRACE_MS - 50);
    expect(tookMs).toBeLessThan(ABORT_GRACE_MS + 2000);
  });

  it('stops at ingest, and starts no stage, when stopped before it began', async () => {
    const dataDir = join(dir, 'before');
    const controller = new AbortController();
    controller.abort(new HeimdallError(ErrorCodes.ABORTED, 'stopped by SIGINT'));
    let ran = false;
    const report = await runInProcess(checkpoint, {
      stages: [exportStage(true, () => (ran = true))],
      store: new FsObjectStore(dataDir),
      registry: new LocalModelRegistry(dataDir),
      config: loadConfig({ HEIMDALL_DATA_DIR: dataDir }),
      logger: createLogger('silent'),
      signal: controller.signal,
    });
    expect(ran).toBe(false);
    expect(report).toMatchObject({ status: 'failed', error: { stage: 'ingest', code: 'ABORTED', message: 'stopped by SIGINT' } });
  });
});

describe('runInProcess, registered', () => {
  async function registeredRun(name: string, moved: boolean) {
    const dataDir = join(dir, name);
    const runState = new FsRunStateStore(dataDir);
    const seen: string[] = [];
    const report = await runInProcess(checkpoint, {
      stages: [registerStage(moved)],
      store: new FsObjectStore(dataDir),
      registry: new LocalModelRegistry(dataDir),
      config: loadConfig({ HEIMDALL_DATA_DIR: dataDir }),
      logger: createLogger('silent'),
      runState,
      onEvent: (event) => seen.push(event.type),
    });
    return { report, seen, record: await runState.get(report.runId) };
  }

  it('publishes the model.promoted that follows a registration which moved the alias, and ends the run after it', async () => {
    const { report, seen, record } = await registeredRun('moved', true);
    expect(seen).toEqual(['heimdall.checkpoint.created', 'heimdall.model.registered', 'heimdall.model.promoted']);
    expect(report.events.at(-1)).toMatchObject({ type: 'heimdall.model.promoted', id: `${report.runId}.promoted.staging`, data: { version: '2', previous: '1', alias: 'staging', reason: 'gate passed' } });
    expect(report).toMatchObject({ status: 'registered', alias: { name: 'staging', moved: true, previous: '1' }, gate: { passed: true } });
    expect(record).toMatchObject({ status: 'registered', promotions: [{ type: 'heimdall.model.promoted', data: { version: '2' } }] });
  });

  it('publishes no promotion when the gate held the model back', async () => {
    const { report, seen, record } = await registeredRun('held', false);
    expect(seen).toEqual(['heimdall.checkpoint.created', 'heimdall.model.registered']);
    expect(report).toMatchObject({ status: 'registered', alias: { moved: false } });
    expect(record?.promotions).toBeUndefined();
  });
});
