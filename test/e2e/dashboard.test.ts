/**
 * The status page in a real browser (Debian's chromium, driven by playwright-core) while real
 * `heimdall run`s fill the run store: two registered versions of a small model and a hostile
 * checkpoint refused at export. The page is opened before the first run and never reloaded: what it
 * shows arrives through its own refresh.
 */
import { copyFile, mkdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDashboard, type Dashboard } from '../../shared/dashboard/index.ts';
import { FsRunStateStore } from '../../shared/pipeline/run-state/fs.ts';
import type { RunReport } from '../../shared/pipeline/report.ts';
import { LocalModelRegistry } from '../../shared/registry/local.ts';
import { DEFAULT_MODEL_NAME } from '../../shared/registry/model-registry.ts';
import { heimdallRun } from '../support/heimdall-cli.ts';
import { writeHostileCheckpoint } from '../support/hostile-checkpoint.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

/** Installed by `npm run setup` (test/support/browser/setup.sh). */
const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOT = join(import.meta.dirname, '../../test-artifacts/dashboard.png');
/** A checkpoint name that is also markup: the page must show it, not run it. */
const HOSTILE_NAME = '<img src=x onerror=window.pwned=1>.pt';

let workdir: string;
let dashboard: Dashboard;
let browser: Browser;
let page: Page;
const reports: Record<'first' | 'second' | 'hostile', RunReport> = {} as never;

beforeAll(async () => {
  const dir = await tempDir('heimdall-dashboard-');
  workdir = join(dir, 'data');
  const [first, second, hostile] = [join(dir, 'first.pth'), join(dir, 'second.pth'), join(dir, HOSTILE_NAME)];
  await writeSmallCheckpoint(first, { seed: 21 });
  await writeSmallCheckpoint(second, { seed: 22 });
  await copyFile(await writeHostileCheckpoint(dir), hostile);

  dashboard = await startDashboard({ runState: new FsRunStateStore(workdir), models: { registry: new LocalModelRegistry(workdir), name: DEFAULT_MODEL_NAME }, port: 0, host: '127.0.0.1', logger: pino({ level: 'warn' }), refreshSeconds: 1 });
  browser = await chromium.launch({ executablePath: CHROMIUM });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(dashboard.url);
  await page.getByText('No runs yet').waitFor();

  // One run at a time, as they share the data dir's registry; the page picks each up by itself.
  for (const [name, checkpoint] of [['first', first], ['second', second], ['hostile', hostile]] as const) {
    reports[name] = (await heimdallRun(checkpoint, workdir)).report;
    await page.locator(`tr.run[data-run-id="${reports[name].runId}"][data-status="${reports[name].status}"]`).waitFor({ timeout: 15_000 });
  }
});

afterAll(async () => {
  await browser?.close();
  await dashboard?.close();
});

describe('the status page after two successful runs and a failed one', () => {
  it('lists every run with its status, newest first', async () => {
    expect([reports.first.status, reports.second.status, reports.hostile.status]).toEqual(['registered', 'registered', 'failed']);
    const rows = page.locator('tr.run');
    expect(await rows.evaluateAll((trs) => trs.map((tr) => [tr.getAttribute('data-run-id'), tr.getAttribute('data-status')]))).toEqual([
      [reports.hostile.runId, 'failed'],
      [reports.second.runId, 'registered'],
      [reports.first.runId, 'registered'],
    ]);
    await expect(page.locator('tr.run .badge').allTextContents()).resolves.toEqual(['failed', 'registered', 'registered']);
    await expect(page.locator('.summary').textContent()).resolves.toMatch(/3\s+runs: 2 registered,\s+1 failed, 0 running/);
  });

  it('shows why the run failed: stage, error code and message', async () => {
    const failure = page.locator(`tr.failure[data-run-id="${reports.hostile.runId}"]`);
    await expect(failure.locator('.stage').textContent()).resolves.toBe('export');
    await expect(failure.locator('.code').textContent()).resolves.toBe('UNSAFE_PICKLE');
    await expect(failure.locator('.message').textContent()).resolves.toBe(reports.hostile.error!.message);
    const stages = page.locator(`tr.run[data-run-id="${reports.hostile.runId}"] .timeline .stage`);
    expect(await stages.evaluateAll((lis) => lis.map((li) => `${li.getAttribute('data-stage')}:${li.getAttribute('data-status')}`))).toEqual([
      'ingest:done',
      'export:failed',
      'validate:pending',
      'parity:pending',
      'benchmark:pending',
      'register:pending',
    ]);
  });

  it('shows the checkpoint name as text, never as markup', async () => {
    await expect(page.locator(`tr.run[data-run-id="${reports.hostile.runId}"] .checkpoint`).textContent()).resolves.toContain(`${reports.hostile.runId}/${HOSTILE_NAME}`);
    expect(await page.locator('main img').count()).toBe(0);
    expect(await page.evaluate('window.pwned')).toBeUndefined();
  });

  it('shows parity and benchmark figures and the registered version of each successful run', async () => {
    for (const [report, version] of [[reports.first, '1'], [reports.second, '2']] as const) {
      const row = page.locator(`tr.run[data-run-id="${report.runId}"]`);
      await expect(row.locator('td.parity').textContent()).resolves.toMatch(/max \|diff\| \d\.\de-\d+ ≤ 1e-5\s+4 reference-impl samples/);
      const { p50, p50Interval, n } = report.benchmark!.perBatch.find((s) => s.batch === 1)!;
      await expect(row.locator('td.benchmark').textContent()).resolves.toContain(`b1 ${p50.toFixed(p50 < 10 ? 2 : 1)} ms [${p50Interval[0].toFixed(2)}–${p50Interval[1].toFixed(2)}] / `);
      await expect(row.locator('td.benchmark').textContent()).resolves.toContain(`n=${n}`);
      await expect(row.locator('.model').textContent()).resolves.toBe(`heimdall-localization v${version}`);
    }
  });

  it('charts p50 with its interval per batch, one point per registered version, and p99 only where the run reported one', async () => {
    const chart = page.locator('svg.chart');
    await expect(chart.locator('text.version').allTextContents()).resolves.toEqual(['v1', 'v2']);
    const versionsOf = (selector: string) => chart.locator(selector).evaluateAll((els) => els.map((e) => e.getAttribute('data-version')));
    for (const batch of [1, 8, 32]) {
      expect(await versionsOf(`circle.point[data-batch="${batch}"][data-stat="p50"]`)).toEqual(['1', '2']);
      expect(await versionsOf(`line.interval[data-batch="${batch}"]`)).toEqual(['1', '2']);
      const withP99 = [reports.first, reports.second].flatMap((r, i) => (r.benchmark!.perBatch.find((s) => s.batch === batch)?.p99 === undefined ? [] : [String(i + 1)]));
      expect(await versionsOf(`circle.point[data-batch="${batch}"][data-stat="p99"]`)).toEqual(withP99);
    }
    // Higher latency is drawn higher: batch 32 above batch 1 for the same version.
    const cy = async (batch: number) => Number(await chart.locator(`circle.point[data-version="1"][data-batch="${batch}"][data-stat="p50"]`).getAttribute('cy'));
    expect(await cy(32)).toBeLessThan(await cy(1));
  });

  it('shows the alias with its holder and every move the registry recorded, newest first', async () => {
    const registry = new LocalModelRegistry(workdir);
    const holder = (await registry.getVersionByAlias(DEFAULT_MODEL_NAME, 'staging'))!.version;
    const moves = (await registry.aliasHistory(DEFAULT_MODEL_NAME)).staging!;
    // The first model of a name passes the gate: staging moved at least once, to v1.
    expect(moves[0]).toMatchObject({ version: '1', reason: 'gate passed', actor: 'heimdall/register' });
    const row = page.locator(`tr.alias[data-alias="staging"]`);
    await expect(row.getAttribute('data-holder')).resolves.toBe(holder);
    await expect(row.locator('.holder').textContent()).resolves.toBe(`v${holder}`);
    const shown = await row.locator('li.move').evaluateAll((lis) => lis.map((li) => [li.getAttribute('data-version'), li.getAttribute('data-reason')]));
    expect(shown).toEqual(moves.map((m) => [m.version, m.reason]).reverse());
  });

  it('serves the same runs as JSON', async () => {
    const { runs } = (await (await fetch(new URL('api/runs', dashboard.url))).json()) as { runs: Array<{ runId: string; status: string }> };
    expect(runs.map((r) => [r.runId, r.status])).toEqual([
      [reports.hostile.runId, 'failed'],
      [reports.second.runId, 'registered'],
      [reports.first.runId, 'registered'],
    ]);
  });

  it('saves a screenshot as a test artifact', async () => {
    await mkdir(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    expect((await stat(SCREENSHOT)).size).toBeGreaterThan(10_000);
  });
});
