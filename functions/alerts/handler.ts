import type { AnyCloudEvent, EventType } from '../../shared/events/index.ts';
import type { EventData, GateCheck } from '../../shared/events/schemas.ts';

/**
 * What people are told about: a run that failed, a model the gate held back, one that took the alias
 * despite a warning, or a configured variant that was not registered.
 */
export interface Alert {
  /** One alert per run and stage (and variant): redeliveries and re-published events map to the same key. */
  readonly key: string;
  readonly runId: string;
  readonly stage: string;
  /** Slack-compatible text (mrkdwn with `&`, `<`, `>` escaped). */
  readonly text: string;
}

export const ALERT_EVENT_TYPES: readonly EventType[] = ['heimdall.pipeline.failed', 'heimdall.model.registered'];

/** The pure part of the alerts function: an event in, its alerts (often none) out. */
export function alertsFor(event: AnyCloudEvent): Alert[] {
  switch (event.type) {
    case 'heimdall.pipeline.failed': {
      const { runId, stage, error, attempt } = event.data;
      const attempts = attempt > 1 ? ` (attempt ${attempt})` : '';
      return [alert(runId, stage, `Heimdall run ${runId} failed at ${stage}: ${error.code}: ${error.message}${attempts}`)];
    }
    case 'heimdall.model.registered': {
      // The gate decides once, at registration: one alert per model it held back (or let through with
      // a warning), the variants' own gates included, and one per variant that never got that far.
      const { runId, registry, gate, alias } = event.data;
      const variants = (event.data.variants ?? []).map((variant) => {
        const stage = `register/${variant.name}`;
        if (!variant.registered) return alert(runId, stage, `Heimdall run ${runId}: the ${variant.name} variant was not registered: ${variant.reason ?? 'no reason given'}`);
        // Registered without a verdict on it: nothing the gate said to tell.
        return variant.registry && variant.gate && variant.alias ? gateAlert(runId, stage, variant.registry, variant.gate, variant.alias) : undefined;
      });
      return [gateAlert(runId, 'register', registry, gate, alias), ...variants].filter((a): a is Alert => a !== undefined);
    }
    default:
      return [];
  }
}

type Registered = EventData<'heimdall.model.registered'>;

/** The gate's verdict on one registered model, when it is news: the model held back by a blocking check, or moved despite a warning. */
function gateAlert(runId: string, stage: string, registry: Registered['registry'], gate: Registered['gate'], alias: Registered['alias']): Alert | undefined {
  const failed = gate.checks.filter((check) => !check.passed);
  const model = `${registry.name} v${registry.version}`;
  if (!alias.moved) {
    const blocking = failed.filter((check) => check.policy === 'block');
    if (blocking.length === 0) return undefined;
    return alert(runId, stage, `Heimdall run ${runId}: ${model} held back from @${alias.name} by ${describe(blocking)}${alias.previous ? ` (v${alias.previous} keeps it)` : ''}`);
  }
  if (failed.length === 0) return undefined;
  return alert(runId, stage, `Heimdall run ${runId}: ${model} moved to @${alias.name} despite a warning from ${describe(failed)}`);
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
