import { ErrorCodes, type HeimdallError } from '../../errors/index.ts';
import { toHttp, type AnyCloudEvent } from '../../events/index.ts';

/**
 * What a reply's status code tells Knative's Broker (knative/specs, eventing data-plane.md, "Event
 * Acknowledgement and Repeat Delivery": 200 = delivered, with the reply event; 400 = unparsable, not
 * retried; other 4xx and 5xx = retried with the Trigger's backoff, then dead-lettered):
 *
 * - 200 + the result event: done; the Broker publishes the reply and routes it to the next function.
 * - 200 + a `pipeline.failed` event that is not retriable (bad checkpoint, invalid model, parity
 *   exceeded): retrying cannot help, so the failure is delivered like a result and routed to alerts.
 * - 500 + a `pipeline.failed` event that is retriable (IO, registry, benchmark): the Broker retries
 *   and, after its last retry, sends the original event to the dead-letter sink.
 * - 400 + the reason: not a valid event of the type this function consumes; never retried.
 * - 415 + the reason: an event whose data is not JSON (`data_base64`, another datacontenttype or
 *   event format): never retried either, it will not become JSON.
 * - 503: starting or draining; the Broker retries, by then on another pod.
 */
function replyStatus(result: AnyCloudEvent): 200 | 500 {
  return result.type === 'heimdall.pipeline.failed' && result.data.retriable ? 500 : 200;
}

/**
 * The event as an HTTP reply in CloudEvents binary mode (DESIGN §3: attributes in ce-* headers, data
 * as the JSON body), its trace context also as the W3C headers.
 */
export function eventReply(event: AnyCloudEvent): Response {
  const { headers, body } = toHttp(event);
  return new Response(body, { status: replyStatus(event), headers });
}

/** 400 (415 for data that is not JSON) for what is not a valid event of the consumed type: the error code and the reason (zod's issues) as JSON. */
export function invalidEventReply(error: HeimdallError): Response {
  return Response.json({ error: { code: error.code, message: error.message } }, { status: error.code === ErrorCodes.UNSUPPORTED_MEDIA_TYPE ? 415 : 400 });
}
