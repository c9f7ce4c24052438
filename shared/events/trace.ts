import { randomBytes } from 'node:crypto';

/**
 * W3C Trace Context (https://www.w3.org/TR/trace-context/) as the CloudEvents distributed-tracing
 * extension carries it: `traceparent` (`version-traceid-parentid-flags`) and `tracestate`. One run
 * is one trace: ingest starts it, and each stage's output continues it in a span of its own.
 */
export interface TraceContext {
  readonly traceparent: string;
  readonly tracestate?: string;
}

/** What an event caused by another carries from it: its trace (in a new span) and its subject. */
export interface EventContext extends TraceContext {
  readonly subject?: string;
}

export interface TraceParent {
  readonly version: string;
  readonly traceId: string;
  readonly parentId: string;
  readonly flags: string;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/**
 * The fields of a `traceparent`, or undefined when it is not one (W3C "traceparent header"):
 * lowercase hex, version `ff` forbidden, trace id and parent id not all zeros. Version 00 is exactly
 * 55 characters; a later version may append fields after a `-` and is read for the four we know
 * ("versioning of traceparent").
 */
export function parseTraceparent(value: string): TraceParent | undefined {
  const match = TRACEPARENT.exec(value);
  if (!match) return undefined;
  const [, version, traceId, parentId, flags, rest] = match as unknown as [string, string, string, string, string, string | undefined];
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (/^0+$/.test(traceId) || /^0+$/.test(parentId)) return undefined;
  return { version, traceId, parentId, flags };
}

const TRACESTATE_KEY = /^(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})$/;
const TRACESTATE_VALUE = /^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/;
const MAX_TRACESTATE_MEMBERS = 32;

/**
 * A `tracestate` with its members joined by `,` (whitespace around them dropped), or undefined when
 * it is not one: a bad key or value, a key twice, more than 32 members (W3C lets a receiver discard
 * such a header whole).
 */
export function parseTracestate(value: string): string | undefined {
  const members = value.split(',').map((member) => member.trim()).filter(Boolean);
  if (members.length === 0 || members.length > MAX_TRACESTATE_MEMBERS) return undefined;
  const keys = new Set<string>();
  for (const member of members) {
    const equals = member.indexOf('=');
    const [key, memberValue] = [member.slice(0, equals), member.slice(equals + 1)];
    if (equals < 0 || !TRACESTATE_KEY.test(key) || !TRACESTATE_VALUE.test(memberValue) || keys.has(key)) return undefined;
    keys.add(key);
  }
  return members.join(',');
}

/**
 * The trace context a sender gave, with an invalid part dropped: an invalid `traceparent` takes its
 * `tracestate` with it (W3C: the receiver then restarts the trace), never refusing the event.
 */
export function validTraceContext(traceparent: unknown, tracestate: unknown): TraceContext | undefined {
  if (typeof traceparent !== 'string' || !parseTraceparent(traceparent)) return undefined;
  const state = typeof tracestate === 'string' ? parseTracestate(tracestate) : undefined;
  return { traceparent, ...(state ? { tracestate: state } : {}) };
}

const spanId = () => randomId(8);

/** Random, and never all zeros (which W3C reserves for "invalid"). */
function randomId(bytes: number): string {
  for (;;) {
    const id = randomBytes(bytes).toString('hex');
    if (!/^0+$/.test(id)) return id;
  }
}

/** A new trace: random trace id and span id, sampled (flags 01), as ingest starts each run. */
export function startTrace(): TraceContext {
  return { traceparent: `00-${randomId(16)}-${spanId()}-01` };
}

/**
 * The context of work done on an event: a new span (its id is the parent-id the output carries, so
 * a tracing system sees each stage as a child of the one before) in the same trace, with the
 * sampling decision and `tracestate` kept; a new trace when the event has none. Written as version
 * 00 whatever version came in, with the flags version 00 defines (sampled, random) and no others.
 */
export function continueTrace(parent: Partial<TraceContext> | undefined): TraceContext {
  const fields = parent?.traceparent ? parseTraceparent(parent.traceparent) : undefined;
  if (!fields) return startTrace();
  const flags = (Number.parseInt(fields.flags, 16) & 0x03).toString(16).padStart(2, '0');
  return { traceparent: `00-${fields.traceId}-${spanId()}-${flags}`, ...(parent?.tracestate ? { tracestate: parent.tracestate } : {}) };
}

/** What an event caused by `input` carries: `input`'s trace in a new span, and its subject. */
export function contextAfter(input: Partial<EventContext> | undefined): EventContext {
  return { ...continueTrace(input), ...(input?.subject ? { subject: input.subject } : {}) };
}

/** The trace id and span id of a context, as logs carry them (empty when it has no valid traceparent). */
export function traceFields(context: Partial<TraceContext> | undefined): { traceId?: string; spanId?: string } {
  const fields = context?.traceparent ? parseTraceparent(context.traceparent) : undefined;
  return fields ? { traceId: fields.traceId, spanId: fields.parentId } : {};
}
