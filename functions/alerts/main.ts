/** The alerts function's HTTP server on $PORT (Knative func shape: handler.ts is the pure function, this serves it). */
import { serveSubscriber } from '../../shared/pipeline/http/server.ts';
import { alertsSubscriber } from './index.ts';

const running = await serveSubscriber(alertsSubscriber, { signals: ['SIGTERM', 'SIGINT'] });
await running.stopped;
