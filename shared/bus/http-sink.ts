import { toHttp, type AnyCloudEvent } from '../events/index.ts';

/**
 * Publishing to a CloudEvents HTTP sink in binary mode, the trace context also as W3C headers: how
 * the ingest adapter hands its events to the Knative Broker (a SinkBinding injects the Broker's
 * address as K_SINK). A non-2xx answer throws, so the notification is not acknowledged and comes again.
 */
export function httpSink(url: string): (event: AnyCloudEvent) => Promise<boolean> {
  return async (event) => {
    const { headers, body } = toHttp(event);
    const response = await fetch(url, { method: 'POST', headers, body });
    if (!response.ok) throw new Error(`sink ${url} answered ${response.status} for ${event.id}`);
    // The Broker deduplicates by nothing we can see: every accepted post counts as new.
    return true;
  };
}
