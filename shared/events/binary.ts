import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { isJsonMediaType, parseEvent, unsupportedMediaType, type AnyCloudEvent } from './envelope.ts';
import { validTraceContext } from './trace.ts';

/**
 * CloudEvents over message headers, shared by the NATS and HTTP transports: binary mode puts the
 * attributes in `ce-*` headers and the data in the body; structured mode (a `content-type`
 * starting `application/cloudevents`; we read its JSON format) carries the whole envelope as the
 * body. Both are accepted; binary mode is what we send. Spec: cloudevents/spec
 * http-protocol-binding.md §3.1/§3.2 and nats-protocol-binding.md (same header naming). Data that
 * is not JSON, or another event format, is UNSUPPORTED_MEDIA_TYPE; anything else that is not a
 * valid event is INVALID_EVENT.
 */
export const STRUCTURED_CONTENT_TYPE = 'application/cloudevents+json';
const STRUCTURED_PREFIX = 'application/cloudevents';
const JSON_FORMATS: ReadonlySet<string> = new Set([STRUCTURED_PREFIX, STRUCTURED_CONTENT_TYPE]);

/** Context attributes and the distributed-tracing extension's, as `ce-*` headers. */
const ATTRIBUTES = ['specversion', 'id', 'type', 'source', 'time', 'subject', 'traceparent', 'tracestate'] as const;

/** Binary-mode headers and body of an event. */
export function toBinary(event: AnyCloudEvent): { headers: Record<string, string>; body: string } {
  const headers: Record<string, string> = { 'content-type': event.datacontenttype };
  for (const name of ATTRIBUTES) {
    const value = event[name];
    if (value !== undefined) headers[`ce-${name}`] = encodeValue(value);
  }
  return { headers, body: JSON.stringify(event.data) };
}

/**
 * Header values are percent-encoded as the HTTP binding requires (§3.1.3.2: space, `"`, `%` and
 * anything outside printable ASCII, as UTF-8): an object key like `runs/épreuve 3.pth` is a valid
 * subject but not a valid HTTP header value.
 */
function encodeValue(value: string): string {
  return value.replace(/[^\x21\x23\x24\x26-\x7e]/gu, (c) => [...Buffer.from(c, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join(''));
}

function decodeValue(name: string, value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    throw new HeimdallError(ErrorCodes.INVALID_EVENT, `header ce-${name} is not valid percent-encoding`);
  }
}

/**
 * The event in a message, whichever mode it uses. `headers` yields [name, value] pairs (names in any
 * case); INVALID_EVENT when the message is not a valid Heimdall CloudEvent, UNSUPPORTED_MEDIA_TYPE
 * when its data is not JSON.
 */
export function fromMessage(headers: Iterable<readonly [string, string]>, body: string): AnyCloudEvent {
  const lower = new Map<string, string>();
  for (const [name, value] of headers) lower.set(name.toLowerCase(), value);
  const contentType = lower.get('content-type') ?? '';
  if (isStructured(contentType)) {
    const format = contentType.split(';')[0]!.trim().toLowerCase();
    if (!JSON_FORMATS.has(format)) throw unsupportedMediaType('event format', format);
    return parseEvent(parseJson(body, 'structured-mode body'));
  }
  if (!lower.has('ce-specversion')) {
    throw new HeimdallError(ErrorCodes.INVALID_EVENT, `not a CloudEvent: no ce-specversion header and content-type is not ${STRUCTURED_CONTENT_TYPE}`);
  }
  if (contentType && !isJsonMediaType(contentType)) throw unsupportedMediaType('data content-type', contentType);
  const envelope: Record<string, unknown> = { datacontenttype: 'application/json', data: parseJson(body, 'event data') };
  for (const name of ATTRIBUTES) {
    const value = lower.get(`ce-${name}`);
    if (value !== undefined) envelope[name] = decodeValue(name, value);
  }
  return parseEvent(envelope);
}

/** Structured mode, by the bindings' rule: a content type starting `application/cloudevents` (any case). */
export function isStructured(contentType: string): boolean {
  return contentType.trim().toLowerCase().startsWith(STRUCTURED_PREFIX);
}

/**
 * Binary mode over HTTP: toBinary's message with the trace context also as the W3C `traceparent`
 * and `tracestate` headers, which HTTP tracing (Knative's, OpenTelemetry's) reads and propagates.
 */
export function toHttp(event: AnyCloudEvent): { headers: Record<string, string>; body: string } {
  const { headers, body } = toBinary(event);
  if (event.traceparent) headers.traceparent = event.traceparent;
  if (event.tracestate) headers.tracestate = event.tracestate;
  return { headers, body };
}

/**
 * The event in an HTTP request or reply, either mode (fromMessage). When the event carries no trace
 * context of its own, the W3C headers give it (Knative sets them on what it delivers); the
 * extension wins when both are there: it is the event's, the headers are the hop's.
 */
export function fromHttp(headers: Headers, body: string): AnyCloudEvent {
  const event = fromMessage(headers, body);
  if (event.traceparent) return event;
  const trace = validTraceContext(headers.get('traceparent'), headers.get('tracestate'));
  return trace ? { ...event, ...trace } : event;
}

function parseJson(body: string, what: string): unknown {
  try {
    return JSON.parse(body);
  } catch {
    throw new HeimdallError(ErrorCodes.INVALID_EVENT, `${what} is not JSON`);
  }
}
