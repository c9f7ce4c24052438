import { Hono } from 'hono';
import type { Logger } from '../logging/index.ts';
import { isRunKey, type RunStateStore } from '../pipeline/run-state/run-state.ts';
import { gatherDashboard, type ModelsSource } from './data.ts';
import { content, page } from './views.ts';

export interface DashboardAppOptions {
  readonly runState: RunStateStore;
  readonly models: ModelsSource;
  readonly logger: Logger;
  /** How often the open page re-renders itself. */
  readonly refreshSeconds: number;
}

/**
 * The status page's routes: `/` the page, `/fragment` what it refreshes, `/api/runs` and
 * `/api/runs/:runId` the run records as JSON (most recently updated first).
 */
export function dashboardApp(options: DashboardAppOptions): Hono {
  const app = new Hono();
  app.use(async (c, next) => {
    await next();
    // Always current: a cached page would show a run as running long after it ended.
    c.header('cache-control', 'no-store');
  });
  app.get('/', async (c) => c.html(page(await gatherDashboard(options.runState, options.models), options.refreshSeconds)));
  app.get('/fragment', async (c) => c.html(content(await gatherDashboard(options.runState, options.models))));
  app.get('/api/runs', async (c) => c.json({ runs: await options.runState.list() }));
  app.get('/api/runs/:runId', async (c) => {
    const runId = c.req.param('runId');
    const run = isRunKey(runId) ? await options.runState.get(runId) : undefined;
    return run ? c.json(run) : c.json({ error: `no run ${runId}` }, 404);
  });
  app.onError((error, c) => {
    options.logger.error({ err: error, path: c.req.path }, 'status page request failed');
    return c.text('internal error: see the server log', 500);
  });
  return app;
}
