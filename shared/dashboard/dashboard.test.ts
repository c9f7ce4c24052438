import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { benchmarkedEvent, latency, registeredEvent } from '../../test/support/events.ts';
import { tempDir } from '../../test/support/temp.ts';
import { HeimdallError } from '../errors/index.ts';
import { createEvent, type AnyCloudEvent } from '../events/index.ts';
import { failureEvent } from '../pipeline/failure.ts';
import { FsRunStateStore } from '../pipeline/run-state/fs.ts';
import { applyEvent, type RunState } from '../pipeline/run-state/run-state.ts';
import { dashboardApp } from './app.ts';
import { logTicks } from './chart.ts';
import { gatherDashboard, registeredVersions, runView } from './data.ts';
import { startDashboard } from './index.ts';

const logger = pino({ level: 'silent' });
const created = (runId: string, key: string) =>
  createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'heimdall-checkpoints', key, size: 712, etag: 'e', runId } });
const fold = (events: AnyCloudEvent[]) => events.reduce<RunState | undefined>((state, event) => applyEvent(state, event), undefined)!;

const failedRun = fold([
  created('e409bb8abadbd75f', 'uploads/<img src=x onerror=alert(1)>.pt'),
  failureEvent('e409bb8abadbd75f', 'export', new HeimdallError('UNSAFE_PICKLE', 'refused global posix.system in <script>alert(2)</script>')),
]);
const registeredRun = (runId: string, version: string, p50: number, created = true) =>
  fold([benchmarkedEvent(runId, [latency(1, p50), latency(8, p50 * 6), latency(32, p50 * 18)]), registeredEvent(runId, version, created)]);

describe('status page data', () => {
  it('shows each stage of a run in pipeline order, and why it failed', () => {
    const view = runView(failedRun);
    expect(view.stages.map((s) => [s.name, s.status])).toEqual([
      ['ingest', 'done'],
      ['export', 'failed'],
      ['validate', 'pending'],
      ['parity', 'pending'],
      ['benchmark', 'pending'],
      ['register', 'pending'],
    ]);
    expect(view.error).toEqual({ stage: 'export', code: 'UNSAFE_PICKLE', message: 'refused global posix.system in <script>alert(2)</script>' });
  });

  it('puts one point per registered version on the chart, oldest first, counting a re-registered model once', () => {
    const v1 = registeredRun('00000000000000b1', '1', 1);
    const v2 = registeredRun('00000000000000b2', '2', 1.5);
    const again = registeredRun('00000000000000b3', '1', 9, false);
    // As the store lists them: most recently updated first.
    const versions = registeredVersions([again, v2, v1, failedRun]);
    expect(versions.map((v) => [v.version, v.runId])).toEqual([
      ['1', '00000000000000b1'],
      ['2', '00000000000000b2'],
    ]);
    expect(versions[0]!.perBatch).toEqual([
      { batch: 1, p50: 1, p99: 1.5 },
      { batch: 8, p50: 6, p99: 9 },
      { batch: 32, p50: 18, p99: 27 },
    ]);
  });

  it('spans the latency axis with 1-2-5 ticks', () => {
    expect(logTicks([0.9, 27])).toEqual([0.5, 1, 2, 5, 10, 20, 50]);
    expect(logTicks([3, 3])).toEqual([2, 5]);
    expect(logTicks([])).toEqual([]);
    expect(logTicks([Number.NaN, 0])).toEqual([]);
    expect(logTicks([0.04, 900])).toEqual([0.02, 0.1, 1, 10, 100, 1000]);
  });
});

describe('status page routes', () => {
  const registered = registeredRun('00000000000000b1', '1', 1);
  const store = { list: async () => [failedRun, registered], get: async (id: string) => (id === failedRun.runId ? failedRun : undefined), update: async () => failedRun };
  const app = dashboardApp({ runState: store, logger, refreshSeconds: 5 });

  it('escapes what users control: checkpoint keys and error messages stay text', async () => {
    const response = await app.request('/');
    expect(response.headers.get('content-type')).toMatch(/^text\/html/);
    const body = await response.text();
    expect(body).toContain('uploads/&lt;img src=x onerror=alert(1)&gt;.pt');
    expect(body).toContain('refused global posix.system in &lt;script&gt;alert(2)&lt;/script&gt;');
    expect(body).not.toMatch(/<img|<script>alert/);
  });

  it('serves the part the open page refreshes, never from a cache', async () => {
    const response = await app.request('/fragment');
    expect(response.headers.get('cache-control')).toBe('no-store');
    const body = await response.text();
    expect(body).toContain('data-run-id="e409bb8abadbd75f"');
    expect(body).not.toContain('<html');
  });

  it('serves the run records as JSON', async () => {
    expect(await (await app.request('/api/runs')).json()).toEqual({ runs: [failedRun, registered] });
    expect(await (await app.request(`/api/runs/${failedRun.runId}`)).json()).toEqual(failedRun);
    expect((await app.request('/api/runs/0000000000000000')).status).toBe(404);
    expect((await app.request('/api/runs/..%2F..%2Fetc')).status).toBe(404);
  });
});

describe('startDashboard', () => {
  it('listens on a free port until closed', async () => {
    const store = new FsRunStateStore(await tempDir());
    await store.update(failedRun.runId, () => failedRun);
    const dashboard = await startDashboard({ runState: store, port: 0, host: '127.0.0.1', logger });
    expect(dashboard.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    const data = await gatherDashboard(store);
    expect(data.counts).toEqual({ running: 0, registered: 0, failed: 1 });
    expect(await (await fetch(dashboard.url)).text()).toContain('UNSAFE_PICKLE');
    await dashboard.close();
    await expect(fetch(dashboard.url)).rejects.toThrow();
  });

  it('reports a port it cannot listen on', async () => {
    const first = await startDashboard({ runState: new FsRunStateStore(await tempDir()), port: 0, logger });
    try {
      const port = Number(new URL(first.url).port);
      await expect(startDashboard({ runState: new FsRunStateStore(await tempDir()), port, logger })).rejects.toThrow(`status page cannot listen on 127.0.0.1:${port}: listen EADDRINUSE`);
    } finally {
      await first.close();
    }
  });
});
