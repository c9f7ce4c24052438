import { z } from 'zod';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { EventSchemas, type EventData, type EventType } from './schemas.ts';

/**
 * CloudEvents 1.0 envelope (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md).
 * `id` is `<runId>.<stage>`: deterministic, so a re-published result is recognisably the same event
 * (JetStream drops it by Nats-Msg-Id).
 */
export interface CloudEvent<T extends EventType = EventType> {
  readonly specversion: '1.0';
  readonly id: string;
  readonly type: T;
  readonly source: string;
  readonly time: string;
  readonly subject?: string;
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
    .datetime({ offset: true })
    .default(() => new Date().toISOString()),
  subject: attribute.optional(),
  // JSON data, with or without parameters (`application/json; charset=utf-8`).
  datacontenttype: z
    .string()
    .regex(/^application\/json\s*(;.*)?$/, 'must be application/json')
    .default('application/json')
    .transform(() => 'application/json' as const),
  data: z.unknown(),
});

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

/** Validates an envelope and its data against the schema of its type; INVALID_EVENT with zod's issues otherwise. */
export function parseEvent(value: unknown): AnyCloudEvent {
  const envelope = Envelope.safeParse(value);
  if (!envelope.success) throw invalidEvent('envelope', envelope.error);
  const schema = schemaOf(envelope.data.type);
  if (!schema) throw new HeimdallError(ErrorCodes.INVALID_EVENT, `unknown event type ${envelope.data.type}`);
  const data = schema.safeParse(envelope.data.data);
  if (!data.success) throw invalidEvent(envelope.data.type, data.error);
  return { ...envelope.data, data: data.data } as AnyCloudEvent;
}

/** The schema of a type we know; own keys only (a type named `constructor` or `__proto__` is simply unknown). */
function schemaOf(type: string): (typeof EventSchemas)[EventType] | undefined {
  return Object.hasOwn(EventSchemas, type) ? EventSchemas[type as EventType] : undefined;
}

function invalidEvent(where: string, error: z.ZodError): HeimdallError {
  const issues = error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
  return new HeimdallError(ErrorCodes.INVALID_EVENT, `invalid ${where}: ${issues}`);
}
