import { z } from 'zod';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { EventSchemas, type EventData, type EventType } from './schemas.ts';
import { normaliseTime } from './time.ts';
import { validTraceContext, type EventContext } from './trace.ts';

/**
 * CloudEvents 1.0 envelope (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md).
 * `id` is `<runId>.<stage>`: deterministic, so a re-published result is recognisably the same event
 * (JetStream drops it by Nats-Msg-Id). `traceparent`/`tracestate` are the distributed-tracing
 * extension (trace.ts); `time` is always in `toISOString()` form (time.ts).
 */
export interface CloudEvent<T extends EventType = EventType> {
  readonly specversion: '1.0';
  readonly id: string;
  readonly type: T;
  readonly source: string;
  readonly time: string;
  readonly subject?: string;
  readonly traceparent?: string;
  readonly tracestate?: string;
  readonly datacontenttype: 'application/json';
  readonly data: EventData<T>;
}

export type AnyCloudEvent = { [T in EventType]: CloudEvent<T> }[EventType];

/**
 * Attributes travel as `ce-*` headers in binary mode, which carry Unicode scalar values only: a lone
 * surrogate (legal in a JSON string) would come back as U+FFFD, so the event id (the Nats-Msg-Id)
 * would change between hops. `\p{Cs}` in a `u` regex matches exactly an unpaired surrogate.
 */
const attribute = z.string().refine((s) => !/\p{Cs}/u.test(s), 'must be well-formed Unicode (no lone surrogates)');

const Envelope = z.object({
  specversion: z.literal('1.0'),
  id: attribute.min(1),
  type: attribute.min(1),
  source: attribute.min(1),
  // Optional in CloudEvents 1.0: an event from another producer without one is stamped on arrival.
  time: z
    .string()
    .transform((value, ctx) => normaliseTime(value) ?? (ctx.addIssue({ code: 'custom', message: 'must be an RFC 3339 date-time' }), z.NEVER))
    .default(() => new Date().toISOString()),
  subject: attribute.optional(),
  // JSON data (any other media type is refused before this schema: jsonDataOnly).
  datacontenttype: z
    .string()
    .default('application/json')
    .transform(() => 'application/json' as const),
  data: z.unknown(),
  // Validated apart (trace.ts): an invalid trace context is dropped, never a refused event.
  traceparent: z.unknown().optional(),
  tracestate: z.unknown().optional(),
});

/** JSON data's media types: `application/json` and any `+json` type (RFC 6839), parameters allowed. */
export function isJsonMediaType(mediaType: string): boolean {
  return /^application\/(?:[^\s;/]+\+)?json\s*(?:;.*)?$/i.test(mediaType.trim());
}

/**
 * UNSUPPORTED_MEDIA_TYPE (HTTP 415), naming what was sent (its first 100 characters: it is the
 * sender's text, echoed in replies and logs): Heimdall reads JSON events with JSON data.
 */
export function unsupportedMediaType(what: string, value?: string): HeimdallError {
  const sent = value === undefined ? '' : ` ${value.length > 100 ? `${value.slice(0, 100)}...` : value}`;
  return new HeimdallError(ErrorCodes.UNSUPPORTED_MEDIA_TYPE, `unsupported ${what}${sent}: Heimdall events carry JSON data (application/json, in binary mode or as application/cloudevents+json)`);
}

/** Refuses a structured event whose data is not JSON: binary data (`data_base64`) or another declared media type. */
function jsonDataOnly(value: unknown): void {
  if (typeof value !== 'object' || value === null) return;
  if (Object.hasOwn(value, 'data_base64')) throw unsupportedMediaType('data_base64 (binary data)');
  const contentType = (value as { datacontenttype?: unknown }).datacontenttype;
  if (typeof contentType === 'string' && !isJsonMediaType(contentType)) throw unsupportedMediaType('datacontenttype', contentType);
}

export function eventId(runId: string, stage: string): string {
  return `${runId}.${stage}`;
}

/** The run id of a checkpoint: the first 16 hex digits of its sha256 (content addressed). */
export function runIdOf(sha256: string): string {
  return sha256.slice(0, 16);
}

export function createEvent<T extends EventType>(
  type: T,
  options: { stage: string; source: string; data: EventData<T>; subject?: string; time?: Date },
): CloudEvent<T> {
  // What a stage built from the content it read (a model's metadata, a checkpoint's names): a
  // deterministic fault that no retry fixes, so INVALID_EVENT rather than zod's plain error.
  const parsed = schemaOf(type)?.safeParse(options.data);
  if (!parsed?.success) throw parsed ? invalidEvent(type, parsed.error) : new HeimdallError(ErrorCodes.INVALID_EVENT, `unknown event type ${type}`);
  const data = parsed.data as EventData<T>;
  const runId = (data as { runId: string }).runId;
  return {
    specversion: '1.0',
    id: eventId(runId, options.stage),
    type,
    source: options.source,
    time: (options.time ?? new Date()).toISOString(),
    ...(options.subject ? { subject: options.subject } : {}),
    datacontenttype: 'application/json',
    data,
  };
}

/**
 * Validates an envelope and its data against the schema of its type; INVALID_EVENT with zod's issues
 * otherwise, UNSUPPORTED_MEDIA_TYPE for data that is not JSON.
 */
export function parseEvent(value: unknown): AnyCloudEvent {
  jsonDataOnly(value);
  const envelope = Envelope.safeParse(value);
  if (!envelope.success) throw invalidEvent('envelope', envelope.error);
  const { traceparent, tracestate, ...attributes } = envelope.data;
  const schema = schemaOf(attributes.type);
  if (!schema) throw new HeimdallError(ErrorCodes.INVALID_EVENT, `unknown event type ${attributes.type}`);
  const data = schema.safeParse(attributes.data);
  if (!data.success) throw invalidEvent(attributes.type, data.error);
  return { ...attributes, ...validTraceContext(traceparent, tracestate), data: data.data } as AnyCloudEvent;
}

/**
 * The event as caused by another: in the context's trace (its own trace context replaced) and,
 * when it names no subject of its own, about the context's subject.
 */
export function inContext<E extends AnyCloudEvent>(event: E, context: EventContext): E {
  const { traceparent: _traceparent, tracestate: _tracestate, ...attributes } = event;
  const subject = event.subject ?? context.subject;
  return { ...attributes, ...(subject ? { subject } : {}), traceparent: context.traceparent, ...(context.tracestate ? { tracestate: context.tracestate } : {}) } as E;
}

/** The schema of a type we know; own keys only (a type named `constructor` or `__proto__` is simply unknown). */
function schemaOf(type: string): (typeof EventSchemas)[EventType] | undefined {
  return Object.hasOwn(EventSchemas, type) ? EventSchemas[type as EventType] : undefined;
}

function invalidEvent(where: string, error: z.ZodError): HeimdallError {
  const issues = error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
  return new HeimdallError(ErrorCodes.INVALID_EVENT, `invalid ${where}: ${issues}`);
}
