import type { ConsumerName } from '../../bus/nats/provision.ts';
import type { Processor } from './worker.ts';

/**
 * A fault-injection hook for tests, never for production use: with `HEIMDALL_TEST_CRASH_STAGE=<stage>`
 * in its environment, a `serve` process SIGKILLs itself on every delivery of that stage's message, as
 * a worker that segfaults or is OOM-killed on one input would. It is how the MaxDeliver path is shown
 * with a process that really dies (test/integration/delivery-exhausted.test.ts). Read from the
 * environment only, not part of the validated configuration; unset, nothing changes.
 */
export const CRASH_STAGE_VARIABLE = 'HEIMDALL_TEST_CRASH_STAGE';

export function withCrashInjection(name: ConsumerName, processor: Processor, environment: NodeJS.ProcessEnv = process.env): Processor {
  if (environment[CRASH_STAGE_VARIABLE] !== name) return processor;
  return async () => {
    process.stderr.write(`${CRASH_STAGE_VARIABLE}=${name}: fault injection kills this process on a delivery\n`);
    process.kill(process.pid, 'SIGKILL');
    // SIGKILL is not handled: the process is gone before this settles.
    return new Promise(() => undefined);
  };
}
