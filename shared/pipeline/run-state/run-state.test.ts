import { describe, expect, it } from 'vitest';
import { createEvent, runIdOf } from '../../events/index.ts';
import { failureEvent } from '../failure.ts';
import { tempDir } from '../../../test/support/temp.ts';
import { FsRunStateStore } from './fs.ts';
import { applyEvent, recordEvent, recordStageStart, stageStarted } from './run-state.ts';
import { HeimdallError } from '../../errors/index.ts';

const runId = runIdOf('cd'.repeat(32));
const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'k.pth', size: 5, etag: 'e', runId } });
const failed = failureEvent(runId, 'export', new HeimdallError('UNSAFE_PICKLE', 'refused global os.system'), 2);

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
});
