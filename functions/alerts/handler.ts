import type { AnyCloudEvent, EventType } from '../../shared/events/index.ts';
import type { GateCheck } from '../../shared/events/schemas.ts';

/** What people are told about: a run that failed, a model the gate held back, or one that took the alias despite a warning. */
export interface Alert {
  /** One alert per run and stage: redeliveries and re-published events map to the same key. */
  readonly key: string;
  readonly runId: string;
  readonly stage: string;
  /** Slack-compatible text (mrkdwn with `&`, `<`, `>` escaped). */
  readonly text: string;
}

export const ALERT_EVENT_TYPES: readonly EventType[] = ['heimdall.pipeline.failed', 'heimdall.model.registered'];

/** The pure part of the alerts function: an event in, an alert (or nothing) out. */
export function alertFor(event: AnyCloudEvent): Alert | undefined {
  switch (event.type) {
    case 'heimdall.pipeline.failed': {
      const { runId, stage, error, attempt } = event.data;
      const attempts = attempt > 1 ? ` (attempt ${attempt})` : '';
      return alert(runId, stage, `Heimdall run ${runId} failed at ${stage}: ${error.code}: ${error.message}${attempts}`);
    }
    case 'heimdall.model.registered': {
      // The gate decides once, at registration: one alert per model it held back (or let through with a warning).
      const { runId, registry, gate, alias } = event.data;
      const failed = gate.checks.filter((check) => !check.passed);
      const model = `${registry.name} v${registry.version}`;
      if (!alias.moved) {
        const blocking = failed.filter((check) => check.policy === 'block');
        if (blocking.length === 0) return undefined;
        return alert(runId, 'register', `Heimdall run ${runId}: ${model} held back from @${alias.name} by ${describe(blocking)}${alias.previous ? ` (v${alias.previous} keeps it)` : ''}`);
      }
      if (failed.length === 0) return undefined;
      return alert(runId, 'register', `Heimdall run ${runId}: ${model} moved to @${alias.name} despite a warning from ${describe(failed)}`);
    }
    default:
      return undefined;
  }
}

/** `latency: 1.31x [1.27, 1.36] of v1 > 1.10; metric: ...`: each check with the figures it compared. */
const describe = (checks: readonly GateCheck[]) => checks.map((check) => `${check.name}: ${check.detail}`).join('; ');

function alert(runId: string, stage: string, text: string): Alert {
  return { key: `${runId}/${stage}`, runId, stage, text: escapeSlack(text) };
}

/** Slack reads `<...>` as links and mentions: text from events (checkpoint names, error messages) must stay text. */
function escapeSlack(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}
