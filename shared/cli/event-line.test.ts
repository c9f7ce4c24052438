import { describe, expect, it } from 'vitest';
import { HeimdallError } from '../errors/index.ts';
import { createEvent, runIdOf } from '../events/index.ts';
import { failureEvent } from '../pipeline/failure.ts';
import { eventLine } from './event-line.ts';

const runId = runIdOf('ef'.repeat(32));

describe('event lines', () => {
  it('read as time, run, stage and key figure', () => {
    const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', time: new Date('2026-11-27T09:00:01Z'), data: { bucket: 'b', key: 'runs/epoch-3.pth', size: 113_200_000, etag: 'e', runId } });
    expect(eventLine(created)).toBe('09:00:01 efefefef ingest    checkpoint runs/epoch-3.pth (113.2 MB)');
  });

  it('never pass terminal escapes through from a key', () => {
    const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'runs/\u001b[2Jevil\n.pth', size: 1, etag: 'e', runId } });
    expect(eventLine(created)).toMatch(/checkpoint runs\/\?\[2Jevil\?\.pth/);
  });

  it('fit an 80-column terminal even with a long key or error message', () => {
    const created = createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: `runs/${'very-long-experiment-name/'.repeat(5)}epoch-3.pth`, size: 1, etag: 'e', runId } });
    const failed = failureEvent(runId, 'export', new HeimdallError('UNSAFE_PICKLE', `refused global posix.system in ${'data.pkl '.repeat(20)}`));
    for (const line of [eventLine(created), eventLine(failed)]) expect(line.length).toBeLessThanOrEqual(80);
    // A long key keeps its file name and the size; a long message is cut at the end.
    expect(eventLine(created)).toMatch(/ingest    checkpoint …[^ ]*\/epoch-3\.pth \(1 B\)$/);
    expect(eventLine(failed).endsWith('…')).toBe(true);
    expect(eventLine(failed)).toMatch(/^\d\d:\d\d:\d\d efefefef export    FAILED UNSAFE_PICKLE: refused global posix.system/);
  });
});
