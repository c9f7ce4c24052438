import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Adapters } from './adapters.ts';
import type { Config } from '../config/index.ts';
import { contextAfter, inContext, traceFields, type AnyCloudEvent, type TraceContext } from '../events/index.ts';
import type { Logger } from '../logging/index.ts';
import { failureEvent } from './failure.ts';
import type { AnyStage, StageContext, StageName } from './stage.ts';

/** What every runner (in-process, NATS worker, HTTP function) gives a stage. */
export interface StageEnvironment extends Adapters {
  readonly config: Config;
  readonly logger: Logger;
  readonly scratchDir: string;
}

export interface Execution {
  readonly signal?: AbortSignal;
  readonly progress?: (message: string) => void;
  /** The delivery attempt (1 on first delivery), reported in a failure event. */
  readonly attempt?: number;
}

/**
 * Runs one stage on one event, the same way for every runner: the handler's result, or the
 * `pipeline.failed` event for its error. Whether a failure is retried is the runner's decision
 * (the event says `retriable`).
 *
 * This is also where a run stays one trace, for every runner: the stage's work is a span of its
 * own in the input's trace (same trace id and sampling, a new span id, `tracestate` kept; a new
 * trace when the input has none), its logs carry the trace and span ids, and its output, result or
 * failure, carries that span as its `traceparent` (so a tracing system shows each stage as the
 * child of the one before) and the input's `subject` when it names none of its own.
 */
export async function executeStage(stage: AnyStage, event: AnyCloudEvent, environment: StageEnvironment, execution: Execution = {}): Promise<AnyCloudEvent> {
  const runId = event.data.runId;
  const context = contextAfter(event);
  try {
    const result = await withStageContext(stage.name, runId, environment, execution, (ctx) => stage.handler(event, ctx), context);
    return inContext(result, context);
  } catch (error) {
    return inContext(failureEvent(runId, stage.name, error, execution.attempt), context);
  }
}

/**
 * Runs work with a stage's context; its scratch dir is its own and is removed afterwards, so a
 * long-lived worker never accumulates what handlers leave behind. The logger names the stage, the
 * run and, given the span the work is done in, its trace id and span id.
 */
export async function withStageContext<T>(stage: StageName, runId: string, environment: StageEnvironment, execution: Execution, work: (ctx: StageContext) => Promise<T>, span?: TraceContext): Promise<T> {
  const scratchDir = await mkdtemp(join(environment.scratchDir, `${stage}-`));
  try {
    return await work({
      store: environment.store,
      registry: environment.registry,
      config: environment.config,
      logger: environment.logger.child({ stage, runId, ...traceFields(span) }),
      signal: execution.signal ?? new AbortController().signal,
      scratchDir,
      progress: execution.progress ?? (() => undefined),
    });
  } finally {
    await rm(scratchDir, { recursive: true, force: true });
  }
}
