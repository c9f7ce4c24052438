import type { Config } from '../config/index.ts';
import { createEvent, inContext, startTrace, type AnyCloudEvent, type CloudEvent } from '../events/index.ts';
import type { ObjectRecord } from '../events/minio.ts';
import type { EventData, EventType } from '../events/schemas.ts';
import type { Logger } from '../logging/index.ts';
import type { ModelRegistry } from '../registry/model-registry.ts';
import type { ObjectStore } from '../storage/object-store.ts';

/** The pipeline's stages in order (DESIGN §1). */
export const STAGES = ['ingest', 'export', 'validate', 'parity', 'benchmark', 'register'] as const;
export type StageName = (typeof STAGES)[number];

/** What a handler may use: the ports, configuration, and ways to report and be stopped. */
export interface StageContext {
  readonly store: ObjectStore;
  readonly registry: ModelRegistry;
  readonly config: Config;
  readonly logger: Logger;
  readonly signal: AbortSignal;
  /** A directory for temporary files; the runner removes what is left. */
  readonly scratchDir: string;
  /** What the stage is doing now, for terminals, status pages and JetStream heartbeats. */
  progress(message: string): void;
}

/** DESIGN §3: a pure handler, event in, event out. It never talks to NATS or HTTP; runners do. */
export type StageHandler<In extends EventType, Out extends EventType> = (event: CloudEvent<In>, ctx: StageContext) => Promise<CloudEvent<Out>>;

export interface StageDefinition<In extends EventType = EventType, Out extends EventType = EventType> {
  readonly name: StageName;
  readonly input: In;
  readonly output: Out;
  readonly handler: StageHandler<In, Out>;
}

export const source = (stage: StageName) => `heimdall/${stage}`;

/** Which stage consumes each event type (DESIGN §1): what a Trigger routes, and who failed when one is dead-lettered. */
export const CONSUMER_OF: Readonly<Partial<Record<EventType, StageName>>> = {
  'heimdall.checkpoint.created': 'export',
  'heimdall.model.exported': 'validate',
  'heimdall.model.validated': 'parity',
  'heimdall.model.parity-checked': 'benchmark',
  'heimdall.model.benchmarked': 'register',
};

/** A stage as runners see it: any event in, any event out (they dispatch on `input`, so the types line up). */
export interface AnyStage {
  readonly name: StageName;
  readonly input: EventType;
  readonly output: EventType;
  readonly handler: (event: AnyCloudEvent, ctx: StageContext) => Promise<AnyCloudEvent>;
}

/** The stage of that name among those wired in (a programming error when it is missing). */
export function stageNamed(stages: readonly AnyStage[], name: StageName): AnyStage {
  const stage = stages.find((s) => s.name === name);
  if (!stage) throw new Error(`stage ${name} is not wired in`);
  return stage;
}

export function defineStage<In extends EventType, Out extends EventType>(definition: StageDefinition<In, Out>): AnyStage {
  return definition as unknown as AnyStage;
}

/**
 * Ingest is the pipeline's source: its input is an object-store notification, not a CloudEvent, and
 * its output is the event that starts the run (checkpoint.created, or model.exported for an ONNX upload).
 */
export type IngestFunction = (object: ObjectRecord, ctx: StageContext) => Promise<AnyCloudEvent>;

/**
 * An event that starts a run (ingest's output, in every runner): from `heimdall/ingest`, about the
 * object's key, and the first of a new trace (random trace id and span id, sampled), which every
 * later event of the run continues.
 */
export function runStartEvent<T extends EventType>(type: T, options: { readonly stage: string; readonly key: string; readonly data: EventData<T> }): CloudEvent<T> {
  const event = createEvent(type, { stage: options.stage, source: source('ingest'), subject: options.key, data: options.data }) as AnyCloudEvent;
  return inContext(event, startTrace()) as CloudEvent<T>;
}
