import { describe, expect, it } from 'vitest';
import { createEvent, runIdOf } from '../../events/index.ts';
import { failureEvent } from '../failure.ts';
import { tempDir } from '../../../test/support/temp.ts';
import { FsRunStateStore } from './fs.ts';
import { applyEvent, recordEvent, recordStageStart, stageStarted } from './run-state.ts';
import { HeimdallError } from '../../errors/index.ts';
import { promotedEvent } from '../../gate/promotion.ts';

const runId = runIdOf('cd'.repeat(32));
const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'k.pth', size: 5, etag: 'e', runId } });
const failed = failureEvent(runId, 'export', new HeimdallError('UNSAFE_PICKLE', 'refused global os.system'), 2);
const promoted = (version: string, alias: string, at: string) =>
  promotedEvent({ runId, name: 'heimdall-localization', version, alias, reason: 'manual', actor: 'ada' }, new Date(at));

describe('run state', () => {
  it('folds events into one record per run: checkpoint, stage outcomes, the failure', () => {
    let state = applyEvent(undefined, created);
    state = stageStarted(state, runId, 'export');
    expect(state.stages.export).toMatchObject({ status: 'running', attempts: 1 });
    state = applyEvent(state, failed);
    expect(state).toMatchObject({
      runId,
      status: 'failed',
      checkpoint: { bucket: 'b', key: 'k.pth', size: 5 },
      error: { stage: 'export', code: 'UNSAFE_PICKLE', message: 'refused global os.system' },
      stages: { ingest: { status: 'done' }, export: { status: 'failed', attempts: 2 } },
    });
  });

  it('counts redeliveries as attempts, and ignores a finished stage seen again', () => {
    let state = stageStarted(undefined, runId, 'export');
    state = stageStarted(state, runId, 'export');
    expect(state.stages.export?.attempts).toBe(2);
    state = applyEvent(state, failed);
    expect(stageStarted(state, runId, 'export')).toBe(state);
    expect(applyEvent(applyEvent(state, failed), failed)).toEqual(applyEvent(state, failed));
  });

  it('are kept as files on the embedded default, newest first', async () => {
    const store = new FsRunStateStore(await tempDir());
    await recordEvent(store, created);
    await recordStageStart(store, runId, 'export');
    await Promise.all([recordEvent(store, failed), recordStageStart(store, 'ab'.repeat(8), 'ingest')]);
    expect((await store.get(runId))?.status).toBe('failed');
    expect((await store.list()).map((r) => r.runId)).toEqual(expect.arrayContaining([runId, 'ab'.repeat(8)]));
    expect(await store.get('0'.repeat(16))).toBeUndefined();
  });

  it('record alias moves beside the stages, once each, leaving stages and outcome as they were', async () => {
    const run = applyEvent(applyEvent(undefined, created), failed);
    const moved = applyEvent(run, promoted('2', 'production', '2099-01-01T00:00:00Z'));
    expect(moved.stages).toEqual(run.stages);
    expect(moved).toMatchObject({ status: 'failed', updatedAt: '2099-01-01T00:00:00.000Z', promotions: [{ type: 'heimdall.model.promoted', data: { version: '2', alias: 'production' } }] });
    // A promotion by the gate has one id per run and alias: seen again (a redelivery), it is not recorded twice.
    const byGate = promotedEvent({ runId, name: 'heimdall-localization', version: '2', alias: 'staging', reason: 'gate passed', actor: 'heimdall/register' });
    expect(applyEvent(applyEvent(moved, byGate), { ...byGate, time: '2099-02-01T00:00:00.000Z' })).toEqual(applyEvent(moved, byGate));
    const twice = applyEvent(moved, promoted('3', 'production', '2099-01-01T00:00:01Z'));
    expect(twice.promotions!.map((p) => (p.data as { version: string }).version)).toEqual(['2', '3']);

    // A promotion of a version whose run has no record here makes up no record.
    const store = new FsRunStateStore(await tempDir());
    expect(await recordEvent(store, promoted('2', 'production', '2099-01-01T00:00:00Z'))).toBeUndefined();
    expect(await store.list()).toEqual([]);
    await recordEvent(store, created);
    expect((await recordEvent(store, promoted('2', 'production', '2099-01-01T00:00:00Z')))?.promotions).toHaveLength(1);
  });
});
