import type { AlertsConfig } from '../../shared/config/index.ts';
import type { Logger } from '../../shared/logging/index.ts';
import type { EventSubscriber, SubscriberFunction } from '../../shared/pipeline/subscriber.ts';
import { ALERT_EVENT_TYPES, alertsFor } from './handler.ts';
import { WebhookNotifier } from './notifier.ts';

/** The alerts function: pipeline failures, the gate's verdicts (a model held back, or moved despite a warning) and variants not registered, posted to webhooks. */
export function createAlerts(config: AlertsConfig, logger: Logger): EventSubscriber & { readonly notifier: WebhookNotifier } {
  const notifier = new WebhookNotifier(config, logger.child({ function: 'alerts' }));
  return {
    types: ALERT_EVENT_TYPES,
    notifier,
    accept: async (event) => {
      const handled = await Promise.all(alertsFor(event).map((alert) => notifier.notify(alert)));
      // Offered again while one is still owed (the notifier posts each key once): after the longest wait asked for.
      const delays = handled.flatMap((h) => (h.kind === 'later' ? [h.delayMs] : []));
      return delays.length > 0 ? { kind: 'later', delayMs: Math.max(...delays) } : { kind: 'done' };
    },
    close: (timeoutMs) => notifier.close(timeoutMs),
  };
}

/** Alerts when HEIMDALL_ALERT_WEBHOOKS is set, else none. */
export const alertsSubscriber: SubscriberFunction = { name: 'alerts', create: (config, logger) => (config.alerts ? createAlerts(config.alerts, logger) : undefined) };
