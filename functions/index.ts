import { defineStage, type AnyStage, type IngestFunction } from '../shared/pipeline/stage.ts';
import type { SubscriberFunction } from '../shared/pipeline/subscriber.ts';
import { alertsSubscriber } from './alerts/index.ts';
import { benchmarkHandler } from './benchmark/handler.ts';
import { exportHandler } from './export/handler.ts';
import { ingestHandler } from './ingest/handler.ts';
import { parityHandler } from './parity/handler.ts';
import { registerHandler } from './register/handler.ts';
import { validateHandler } from './validate/handler.ts';

/** Every stage function with the event it consumes and the one it produces, in pipeline order. */
export const stageFunctions: readonly AnyStage[] = [
  defineStage({ name: 'export', input: 'heimdall.checkpoint.created', output: 'heimdall.model.exported', handler: exportHandler }),
  defineStage({ name: 'validate', input: 'heimdall.model.exported', output: 'heimdall.model.validated', handler: validateHandler }),
  defineStage({ name: 'parity', input: 'heimdall.model.validated', output: 'heimdall.model.parity-checked', handler: parityHandler }),
  defineStage({ name: 'benchmark', input: 'heimdall.model.parity-checked', output: 'heimdall.model.benchmarked', handler: benchmarkHandler }),
  defineStage({ name: 'register', input: 'heimdall.model.benchmarked', output: 'heimdall.model.registered', handler: registerHandler }),
];

/** The functions that only listen to events (alerts), each active when configured. */
export const subscriberFunctions: readonly SubscriberFunction[] = [alertsSubscriber];

/** The pipeline's source: a created object in, the event that starts its run out. */
export const ingestFunction: IngestFunction = ingestHandler;
