import type { AnyCloudEvent, EventType } from '../../shared/events/index.ts';

/** What people are told about: a run that failed, or a model slower than the one holding the alias. */
export interface Alert {
  /** One alert per run and stage: redeliveries and re-published events map to the same key. */
  readonly key: string;
  readonly runId: string;
  readonly stage: string;
  /** Slack-compatible text (mrkdwn with `&`, `<`, `>` escaped). */
  readonly text: string;
}

export const ALERT_EVENT_TYPES: readonly EventType[] = ['heimdall.pipeline.failed', 'heimdall.model.benchmarked'];

/** The pure part of the alerts function: an event in, an alert (or nothing) out. */
export function alertFor(event: AnyCloudEvent): Alert | undefined {
  switch (event.type) {
    case 'heimdall.pipeline.failed': {
      const { runId, stage, error, attempt } = event.data;
      const attempts = attempt > 1 ? ` (attempt ${attempt})` : '';
      return alert(runId, stage, `Heimdall run ${runId} failed at ${stage}: ${error.code}: ${error.message}${attempts}`);
    }
    case 'heimdall.model.benchmarked': {
      const { runId, baseline, perBatch } = event.data;
      if (!baseline?.regression) return undefined;
      const p50 = perBatch.find((s) => s.batch === 1)?.p50 ?? baseline.p50 * baseline.ratio;
      return alert(
        runId,
        'benchmark',
        `Heimdall run ${runId}: latency regression: batch-1 p50 ${ms(p50)} is ${baseline.ratio.toFixed(2)}x version ${baseline.version}'s ${ms(baseline.p50)} (threshold +${Math.round(baseline.threshold * 100)}%)`,
      );
    }
    default:
      return undefined;
  }
}

function alert(runId: string, stage: string, text: string): Alert {
  return { key: `${runId}/${stage}`, runId, stage, text: escapeSlack(text) };
}

const ms = (value: number) => `${value.toFixed(value < 10 ? 2 : 1)} ms`;

/** Slack reads `<...>` as links and mentions: text from events (checkpoint names, error messages) must stay text. */
function escapeSlack(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}
