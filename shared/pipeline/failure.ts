import { asHeimdallError, isRetriable } from '../errors/index.ts';
import { createEvent, type CloudEvent } from '../events/index.ts';
import { source, type StageName } from './stage.ts';

/** The `pipeline.failed` event for an error in a stage: stable code, one-line message, no stack. */
export function failureEvent(runId: string, stage: StageName, error: unknown, attempt = 1): CloudEvent<'heimdall.pipeline.failed'> {
  const failure = asHeimdallError(error);
  // The id `<runId>.<stage>.failed` names the run and the stage that failed.
  return createEvent('heimdall.pipeline.failed', {
    stage: `${stage}.failed`,
    source: source(stage),
    data: { runId, stage, error: { code: failure.code, message: failure.message.split('\n')[0]! }, attempt, retriable: isRetriable(failure.code) },
  });
}
