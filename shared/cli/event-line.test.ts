import { describe, expect, it } from 'vitest';
import { HeimdallError } from '../errors/index.ts';
import { createEvent, runIdOf } from '../events/index.ts';
import { decideGate } from '../gate/checks.ts';
import { promotedEvent } from '../gate/promotion.ts';
import { failureEvent } from '../pipeline/failure.ts';
import { benchmarkedEvent, latency, registeredEvent } from '../../test/support/events.ts';
import { eventLine, eventLines } from './event-line.ts';

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

  describe('of a registration, show the gate and the alias', () => {
    const time = new Date('2026-11-27T09:00:01Z');
    const holder = { version: '1', tags: { 'training.val_loss': '0.31' } };
    const registered = (gate: ReturnType<typeof decideGate>, previous?: string) =>
      createEvent('heimdall.model.registered', {
        stage: 'register',
        source: 'heimdall/register',
        time,
        data: {
          runId,
          registry: { name: 'heimdall-localization', version: '2', runId: 'r', modelUri: 'models:/heimdall-localization/2', created: true },
          gate,
          alias: { name: 'staging', moved: gate.passed, ...(previous ? { previous } : {}) },
          onnx: { uri: 's3://heimdall-models/m.onnx', sha256: 'a'.repeat(64), bytes: 1, opset: 14, irVersion: 7 },
        },
      });
    const slower = benchmarkedEvent(runId, [latency(1, 13.1)], { version: '1', p50: 10, threshold: 0.1, ratioInterval: [1.27, 1.36] }).data.baseline;
    const config = { latency: 'block' as const, metric: { name: 'val_loss', better: 'lower' as const, tolerance: 0, policy: 'warn' as const } };

    it('a move: where the alias went, from where, and any warning', () => {
      expect(eventLine(registered(decideGate({ config }), undefined))).toBe('09:00:01 efefefef register  v2 @staging');
      const warned = decideGate({ config, holder, training: { metrics: { val_loss: 0.4 }, hyperParameters: {} } });
      expect(eventLine(registered(warned, '1'))).toBe('09:00:01 efefefef register  v2 @staging (was v1) WARNED metric');
    });

    it('held back: the check and its figures, within 80 columns', () => {
      const line = eventLine(registered(decideGate({ config, holder, baseline: slower }), '1'));
      expect(line).toBe('09:00:01 efefefef register  v2 blocked: latency 1.31x [1.27, 1.36] of v1 > 1.10');
      expect(line.length).toBeLessThanOrEqual(80);
    });

    it('a promotion: the alias, from and to, why and by whom', () => {
      const promoted = promotedEvent({ runId, name: 'heimdall-localization', version: '3', alias: 'production', previous: '2', reason: 'manual', actor: 'ada' }, time);
      expect(eventLine(promoted)).toBe('09:00:01 efefefef promote   @production -> v3 (was v2), manual by ada');
      const byGate = promotedEvent({ runId, name: 'heimdall-localization', version: '2', alias: 'staging', reason: 'gate passed', actor: 'heimdall/register' }, time);
      expect(eventLine(byGate)).toBe('09:00:01 efefefef promote   @staging -> v2, gate passed');
    });
  });

  it('add one short line per variant: its registration, or why it was held back', () => {
    const base = registeredEvent(runId, '3');
    const int8 = { name: 'heimdall-localization-int8', version: '2', runId, modelUri: 'models:/heimdall-localization-int8/2', created: true };
    const withVariants = { ...base, data: { ...base.data, variants: [{ name: 'int8' as const, registered: true, registry: int8, gate: { passed: true, checks: [] }, alias: { name: 'staging', moved: true } }] } };
    const lines = eventLines(withVariants);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toBe(eventLine(base));
    expect(lines[1]).toMatch(/^\d\d:\d\d:\d\d efefefef register  heimdall-localization-int8 v2 @staging$/);
    const held = { ...base, data: { ...base.data, variants: [{ name: 'int8' as const, registered: false, reason: 'held back at parity: positions max |diff| 2.00e-1 against the fp32 model on 4 samples exceeds its tolerance 0.05' }] } };
    // Cut at the terminal's width: the run's summary line and --json have the whole reason.
    expect(eventLines(held)[1]).toMatch(/register  int8 not registered: held back at parity: pos.*…$/);
    expect(eventLines(held)[1]!.length).toBeLessThanOrEqual(80);
    expect(eventLines(base)).toEqual([eventLine(base)]);
  });
});
