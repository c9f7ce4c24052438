/** The validate function's HTTP server on $PORT (Knative func shape: handler.ts is the pure function, this serves it). */
import { serveFunction } from '../../shared/pipeline/http/server.ts';
import { stageFunctions } from '../index.ts';

const running = await serveFunction(stageFunctions.find((s) => s.name === 'validate')!, { signals: ['SIGTERM', 'SIGINT'] });
await running.stopped;
