import type { AnyCloudEvent } from '../../events/index.ts';
import type { StageName } from '../stage.ts';

/**
 * What a run looks like to people and tools (`heimdall status`, the status page): one record per
 * run id, folded from the events the run published plus the runners' "stage started" marks. The
 * record keeps each stage's last event, so any figure can be shown without replaying the stream.
 */
/** An event as a run record keeps it (envelope attributes a reader needs, and the data). */
export interface RecordedEvent {
  readonly type: string;
  readonly id: string;
  readonly time: string;
  readonly data: unknown;
}

export interface StageRecord {
  readonly status: 'running' | 'done' | 'failed';
  readonly attempts: number;
  readonly startedAt?: string;
  readonly finishedAt?: string;
  /** The event that ended the stage (its result or its `pipeline.failed`). */
  readonly event?: RecordedEvent;
}

export interface RunState {
  readonly runId: string;
  readonly status: 'running' | 'registered' | 'failed';
  readonly checkpoint?: { readonly bucket: string; readonly key: string; readonly size: number };
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly stages: Readonly<Partial<Record<StageName, StageRecord>>>;
  readonly error?: { readonly stage: string; readonly code: string; readonly message: string };
  /** `model.promoted` events of the version this run registered (by the gate or by hand), oldest first. */
  readonly promotions?: readonly RecordedEvent[];
}

/** The stage whose result an event is (the failing stage for `pipeline.failed`). */
const producers: Record<AnyCloudEvent['type'], StageName | undefined> = {
  'heimdall.checkpoint.created': 'ingest',
  'heimdall.model.exported': 'export',
  'heimdall.model.validated': 'validate',
  'heimdall.model.parity-checked': 'parity',
  'heimdall.model.benchmarked': 'benchmark',
  'heimdall.model.registered': 'register',
  // An alias move follows a registration (or a person): it is no stage's result.
  'heimdall.model.promoted': undefined,
  'heimdall.pipeline.failed': undefined,
};

function emptyRun(runId: string, at: string): RunState {
  return { runId, status: 'running', createdAt: at, updatedAt: at, stages: {} };
}

/** A stage began (or began again after a redelivery). */
export function stageStarted(state: RunState | undefined, runId: string, stage: StageName, at = new Date().toISOString()): RunState {
  const run = state ?? emptyRun(runId, at);
  const previous = run.stages[stage];
  // A finished stage seen again is a duplicate delivery: the record keeps its outcome.
  if (previous && previous.status !== 'running') return run;
  const attempts = (previous?.attempts ?? 0) + 1;
  return { ...run, updatedAt: at, stages: { ...run.stages, [stage]: { status: 'running', attempts, startedAt: previous?.startedAt ?? at } } };
}

/** Folds one published event into its run's record. Idempotent: the same event twice changes nothing more. */
export function applyEvent(state: RunState | undefined, event: AnyCloudEvent): RunState {
  const runId = event.data.runId;
  const run = state ?? emptyRun(runId, event.time);
  if (event.type === 'heimdall.model.promoted') return withPromotion(run, event);
  const failed = event.type === 'heimdall.pipeline.failed';
  const stage = failed ? (event.data.stage as StageName) : producers[event.type]!;
  const previous = run.stages[stage];
  const record: StageRecord = {
    status: failed ? 'failed' : 'done',
    attempts: Math.max(previous?.attempts ?? 1, failed ? event.data.attempt : 1),
    startedAt: previous?.startedAt ?? event.time,
    finishedAt: event.time,
    event: { type: event.type, id: event.id, time: event.time, data: event.data },
  };
  return {
    ...run,
    updatedAt: event.time > run.updatedAt ? event.time : run.updatedAt,
    ...(event.type === 'heimdall.checkpoint.created' ? { checkpoint: { bucket: event.data.bucket, key: event.data.key, size: event.data.size } } : {}),
    // A registered run stays registered: a late failure of a redelivered stage cannot undo it.
    status: run.status === 'registered' ? 'registered' : event.type === 'heimdall.model.registered' ? 'registered' : failed ? 'failed' : run.status,
    ...(failed && run.status !== 'registered' ? { error: { stage: event.data.stage, code: event.data.error.code, message: event.data.error.message } } : {}),
    stages: { ...run.stages, [stage]: record },
  };
}

/** A promotion is recorded beside the stages, once per event id; the run's outcome is not touched. */
function withPromotion(run: RunState, event: AnyCloudEvent): RunState {
  if (run.promotions?.some((p) => p.id === event.id)) return run;
  return {
    ...run,
    updatedAt: event.time > run.updatedAt ? event.time : run.updatedAt,
    promotions: [...(run.promotions ?? []), { type: event.type, id: event.id, time: event.time, data: event.data }],
  };
}

/**
 * What may name a run record: run ids are 16 hex digits, `unknown` when a file could not even be
 * hashed; anything else (from a URL or a file name) is refused before it reaches a store.
 */
export function isRunKey(id: string): boolean {
  return /^[0-9a-z]{1,64}$/.test(id);
}

/** The RunStateStore port: KV bucket `heimdall_runs` on NATS, files in the data dir when embedded. */
export interface RunStateStore {
  get(runId: string): Promise<RunState | undefined>;
  /** Every run, most recently updated first. */
  list(): Promise<RunState[]>;
  /** Applies a change atomically (compare-and-set where the store is shared) and returns the new state. */
  update(runId: string, change: (state: RunState | undefined) => RunState): Promise<RunState>;
}

/**
 * Folds an event into its run's record. A promotion is recorded only on a run that has a record: a
 * version registered elsewhere (another data dir, another tool) gets no record made up for it.
 */
export async function recordEvent(store: RunStateStore, event: AnyCloudEvent): Promise<RunState | undefined> {
  if (event.type === 'heimdall.model.promoted' && !(isRunKey(event.data.runId) && (await store.get(event.data.runId)))) return undefined;
  return store.update(event.data.runId, (state) => applyEvent(state, event));
}
export const recordStageStart = (store: RunStateStore, runId: string, stage: StageName) => store.update(runId, (state) => stageStarted(state, runId, stage));
