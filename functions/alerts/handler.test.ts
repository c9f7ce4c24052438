import { describe, expect, it } from 'vitest';
import { HeimdallError } from '../../shared/errors/index.ts';
import { failureEvent } from '../../shared/pipeline/failure.ts';
import { benchmarkedEvent, latency, registeredEvent } from '../../test/support/events.ts';
import { alertFor } from './handler.ts';

const runId = '9d3af116bd813a51';

describe('alerts handler: event in, alert or nothing out', () => {
  it('turns a pipeline failure into one line naming the run, the stage and the error code', () => {
    const alert = alertFor(failureEvent(runId, 'export', new HeimdallError('UNSAFE_PICKLE', 'refused global posix.system')));
    expect(alert).toEqual({
      key: `${runId}/export`,
      runId,
      stage: 'export',
      text: `Heimdall run ${runId} failed at export: UNSAFE_PICKLE: refused global posix.system`,
    });
    expect(alertFor(failureEvent(runId, 'register', new HeimdallError('REGISTRY_ERROR', 'MLflow answered 503'), 3))?.text).toMatch(/: REGISTRY_ERROR: MLflow answered 503 \(attempt 3\)$/);
  });

  it('keeps text from events as text in Slack: no links, mentions or markup', () => {
    const alert = alertFor(failureEvent(runId, 'ingest', new HeimdallError('CHECKPOINT_NOT_FOUND', 'no such checkpoint file: <!channel> & <http://evil|click>.pt')));
    expect(alert?.text).toContain('no such checkpoint file: &lt;!channel&gt; &amp; &lt;http://evil|click&gt;.pt');
    expect(alert?.text).not.toMatch(/[<>]/);
  });

  it('alerts on a benchmark flagged as a regression against the alias holder, not on other benchmarks', () => {
    const regression = alertFor(benchmarkedEvent(runId, [latency(1, 12.5), latency(8, 40)], { version: '4', p50: 10, threshold: 0.1 }));
    expect(regression).toEqual({
      key: `${runId}/benchmark`,
      runId,
      stage: 'benchmark',
      text: `Heimdall run ${runId}: latency regression: batch-1 p50 12.5 ms is 1.25x version 4's 10.0 ms (threshold +10%)`,
    });
    expect(alertFor(benchmarkedEvent(runId, [latency(1, 10.5)], { version: '4', p50: 10, threshold: 0.1 }))).toBeUndefined();
    expect(alertFor(benchmarkedEvent(runId, [latency(1, 99)]))).toBeUndefined();
  });

  it('ignores every other event', () => {
    expect(alertFor(registeredEvent(runId, '5'))).toBeUndefined();
  });
});
