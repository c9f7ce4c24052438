import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import { HeimdallError } from '../../shared/errors/index.ts';
import { decideGate } from '../../shared/gate/checks.ts';
import { failureEvent } from '../../shared/pipeline/failure.ts';
import { benchmarkedEvent, latency, registeredEvent } from '../../test/support/events.ts';
import { ALERT_EVENT_TYPES, alertsFor } from './handler.ts';

const runId = '9d3af116bd813a51';

describe('alerts handler: event in, its alerts (often none) out', () => {
  it('turns a pipeline failure into one line naming the run, the stage and the error code', () => {
    const [alert, ...others] = alertsFor(failureEvent(runId, 'export', new HeimdallError('UNSAFE_PICKLE', 'refused global posix.system')));
    expect(alert).toEqual({
      key: `${runId}/export`,
      runId,
      stage: 'export',
      text: `Heimdall run ${runId} failed at export: UNSAFE_PICKLE: refused global posix.system`,
    });
    expect(others).toEqual([]);
    expect(alertsFor(failureEvent(runId, 'register', new HeimdallError('REGISTRY_ERROR', 'MLflow answered 503'), 3))[0]?.text).toMatch(/: REGISTRY_ERROR: MLflow answered 503 \(attempt 3\)$/);
  });

  it('keeps text from events as text in Slack: no links, mentions or markup', () => {
    const [alert] = alertsFor(failureEvent(runId, 'ingest', new HeimdallError('CHECKPOINT_NOT_FOUND', 'no such checkpoint file: <!channel> & <http://evil|click>.pt')));
    expect(alert?.text).toContain('no such checkpoint file: &lt;!channel&gt; &amp; &lt;http://evil|click&gt;.pt');
    expect(alert?.text).not.toMatch(/[<>]/);
  });

  describe('on a registration, says what the gate did', () => {
    const holder = { version: '4', tags: { 'training.val_loss': '0.31' } };
    const slower = benchmarkedEvent(runId, [latency(1, 12.5), latency(8, 40)], { version: '4', p50: 10, threshold: 0.1 }).data.baseline;
    const config = loadConfig({}).gate;

    it('names the blocking check and its figures when the alias stayed with the holder', () => {
      const gate = decideGate({ config, holder, baseline: slower, training: { metrics: { val_loss: 0.3 }, hyperParameters: {} } });
      expect(alertsFor(registeredEvent(runId, '5', true, gate))).toEqual([{
        key: `${runId}/register`,
        runId,
        stage: 'register',
        text: `Heimdall run ${runId}: heimdall-localization v5 held back from @staging by latency: 1.25x [1.21, 1.29] of v4 &gt; 1.10`,
      }]);
      const both = decideGate({ config, holder, baseline: slower, training: { metrics: { val_loss: 0.5 }, hyperParameters: {} } });
      expect(alertsFor(registeredEvent(runId, '5', true, both))[0]?.text).toBe(
        `Heimdall run ${runId}: heimdall-localization v5 held back from @staging by latency: 1.25x [1.21, 1.29] of v4 &gt; 1.10; metric: val_loss 0.5 &gt; v4's 0.31 + tolerance 0`,
      );
    });

    it('says when a model took the alias despite a failed warn-policy check', () => {
      const gate = decideGate({ config: { ...config, metric: { ...config.metric!, policy: 'warn' } }, holder, training: { metrics: { val_loss: 0.5 }, hyperParameters: {} } });
      expect(alertsFor(registeredEvent(runId, '5', true, gate))[0]?.text).toBe(`Heimdall run ${runId}: heimdall-localization v5 moved to @staging despite a warning from metric: val_loss 0.5 &gt; v4's 0.31 + tolerance 0`);
    });

    it('stays quiet when every check passed, and on the benchmark (the gate decides, at registration)', () => {
      const gate = decideGate({ config, holder, baseline: benchmarkedEvent(runId, [latency(1, 10.2)], { version: '4', p50: 10, threshold: 0.1 }).data.baseline, training: { metrics: { val_loss: 0.3 }, hyperParameters: {} } });
      expect(gate.checks.map((c) => c.passed)).toEqual([true, true]);
      expect(alertsFor(registeredEvent(runId, '5', true, gate))).toEqual([]);
      expect(alertsFor(registeredEvent(runId, '1'))).toEqual([]);
      expect(alertsFor(benchmarkedEvent(runId, [latency(1, 12.5)], { version: '4', p50: 10, threshold: 0.1 }))).toEqual([]);
    });
  });

  it('names each variant that was not registered, and what its own gate did', () => {
    const config = loadConfig({}).gate;
    const holder = { version: '4', tags: {} };
    const slower = benchmarkedEvent(runId, [latency(1, 12.5)], { version: '4', p50: 10, threshold: 0.1 }).data.baseline;
    const held = decideGate({ config, holder, baseline: slower });
    const base = registeredEvent(runId, '5');
    const withVariant = (variant: NonNullable<typeof base.data.variants>[number]) => ({ ...base, data: { ...base.data, variants: [variant] } });
    const notRegistered = withVariant({ name: 'int8', registered: false, reason: 'held back at parity: positions max |diff| 2.10e-2 against the fp32 model on 4 samples exceeds its tolerance 0.01' });
    expect(alertsFor(notRegistered)).toEqual([
      expect.objectContaining({ key: `${runId}/register/int8`, text: `Heimdall run ${runId}: the int8 variant was not registered: held back at parity: positions max |diff| 2.10e-2 against the fp32 model on 4 samples exceeds its tolerance 0.01` }),
    ]);
    const registered = { name: 'int8' as const, registered: true, registry: { ...base.data.registry, name: 'heimdall-localization-int8', version: '3' } };
    expect(alertsFor(withVariant({ ...registered, gate: held, alias: { name: 'staging', moved: false, previous: '2' } }))).toEqual([
      expect.objectContaining({ key: `${runId}/register/int8`, text: `Heimdall run ${runId}: heimdall-localization-int8 v3 held back from @staging by latency: 1.25x [1.21, 1.29] of v4 &gt; 1.10 (v2 keeps it)` }),
    ]);
    // A variant registered and moved like the fp32 model is no news.
    expect(alertsFor(withVariant({ ...registered, gate: { passed: true, checks: [] }, alias: { name: 'staging', moved: true } }))).toEqual([]);
    // Nor one registered that carries no verdict: it is not "not registered".
    expect(alertsFor(withVariant(registered))).toEqual([]);
  });

  it('listens to failures and registrations only', () => {
    expect(ALERT_EVENT_TYPES).toEqual(['heimdall.pipeline.failed', 'heimdall.model.registered']);
  });
});
