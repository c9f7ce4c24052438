import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { fromMessage, isJsonMediaType, isStructured, STRUCTURED_CONTENT_TYPE, toBinary, unsupportedMediaType, type AnyCloudEvent } from '../../events/index.ts';

/**
 * CloudEvents on NATS as the protocol binding (cloudevents/spec nats-protocol-binding.md) and its
 * SDKs (sdk-go protocol/nats, protocol/nats_jetstream) have it. We send binary mode: attributes as
 * `ce-*` headers, `datacontenttype` as `ce-datacontenttype` (and as `content-type`, which readers
 * of the HTTP-style naming use), data as the body. We accept:
 * - structured mode: any `Content-Type` starting `application/cloudevents` (the binding's rule;
 *   JSON is the only event format we read);
 * - a message without `ce-*` headers and without `content-type` whose JSON body is a CloudEvent
 *   (has `specversion`): structured, as sdk-go's NATS and JetStream writers send it;
 * - binary mode, the data content type from `ce-datacontenttype`, else `content-type`.
 * The distributed-tracing extension travels as `ce-traceparent`/`ce-tracestate` (binary) or as
 * top-level attributes (structured), like any other attribute.
 */
export function encodeEvent(event: AnyCloudEvent): { headers: MsgHdrs; body: string } {
  const { headers, body } = toBinary(event);
  const h = natsHeaders();
  for (const [name, value] of Object.entries(headers)) h.set(name, value);
  h.set('ce-datacontenttype', event.datacontenttype);
  return { headers: h, body };
}

/** The event in a NATS message, whichever mode it uses; INVALID_EVENT when it is not a valid Heimdall CloudEvent (UNSUPPORTED_MEDIA_TYPE when its data is not JSON). */
export function decodeEvent(headers: MsgHdrs | undefined, body: string): AnyCloudEvent {
  const lower = new Map<string, string>();
  for (const name of headers?.keys() ?? []) if (!lower.has(name.toLowerCase())) lower.set(name.toLowerCase(), headers!.get(name));
  const contentType = lower.get('content-type');
  // Structured mode; fromMessage refuses an event format other than JSON.
  if (contentType !== undefined && isStructured(contentType)) return fromMessage([['content-type', contentType]], body);
  const hasAttributes = [...lower.keys()].some((name) => name.startsWith('ce-'));
  if (!hasAttributes && contentType === undefined && looksStructured(body)) return structured(body);
  // Binary mode (or not an event: fromMessage says why). `ce-datacontenttype` is the binding's
  // header for the data content type; `content-type` is read when it is absent.
  const pairs: Array<[string, string]> = [];
  for (const [name, value] of lower) if (name !== 'content-type' && name !== 'ce-datacontenttype') pairs.push([name, value]);
  // An empty value says nothing, as fromMessage reads an empty content-type.
  const dataContentType = lower.get('ce-datacontenttype') || contentType;
  if (dataContentType) {
    if (!isJsonMediaType(dataContentType)) throw unsupportedMediaType('data content-type', dataContentType);
    pairs.push(['content-type', dataContentType]);
  }
  return fromMessage(pairs, body);
}

function structured(body: string): AnyCloudEvent {
  return fromMessage([['content-type', STRUCTURED_CONTENT_TYPE]], body);
}

/** A JSON object with a `specversion`: a structured-mode event sent without headers. */
function looksStructured(body: string): boolean {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    return false;
  }
  return typeof json === 'object' && json !== null && !Array.isArray(json) && Object.hasOwn(json, 'specversion');
}
