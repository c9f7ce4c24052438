import { asHeimdallError, isRetriable } from '../errors/index.ts';
import { contextAfter, createEvent, inContext, startTrace, type AnyCloudEvent, type CloudEvent } from '../events/index.ts';
import { source, type StageName } from './stage.ts';

/**
 * The `pipeline.failed` event for an error in a stage: stable code, one-line message, no stack.
 * Without an input event (ingest could not even hash the object) it is the first event of its run,
 * so it starts a trace, as ingest's events do; `failureOn` is the failure of a stage on an event.
 */
export function failureEvent(runId: string, stage: StageName, error: unknown, attempt = 1): CloudEvent<'heimdall.pipeline.failed'> {
  const failure = asHeimdallError(error);
  // The id `<runId>.<stage>.failed` names the run and the stage that failed.
  const event = createEvent('heimdall.pipeline.failed', {
    stage: `${stage}.failed`,
    source: source(stage),
    data: { runId, stage, error: { code: failure.code, message: failure.message.split('\n')[0]! }, attempt, retriable: isRetriable(failure.code) },
  });
  return inContext(event, startTrace());
}

/** The failure of `stage` on its input event: in the event's trace (a new span) and about its subject, as a result would be. */
export function failureOn(input: AnyCloudEvent, stage: StageName, error: unknown, attempt = 1): CloudEvent<'heimdall.pipeline.failed'> {
  return inContext(failureEvent(input.data.runId, stage, error, attempt), contextAfter(input));
}
