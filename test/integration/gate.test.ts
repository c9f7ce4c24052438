/**
 * Issue 12's gate, end to end in this process: the real stages on the embedded store and registry,
 * the real alerts subscriber posting to a real HTTP server standing in for Slack. A checkpoint with
 * a worse val_loss than the alias holder is held back by the metric check (and moves the alias when
 * that check only warns); a larger, slower variant under the same name is held back by the latency
 * check that the benchmark's interleaved timing feeds. Every model is registered either way.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alertsSubscriber } from '../../functions/alerts/index.ts';
import { stageFunctions } from '../../functions/index.ts';
import { pyDict, pyFloat, pyOrderedDict, type PickleValue } from '../../shared/checkpoint/pickle-writer.ts';
import { writeTorchCheckpoint } from '../../shared/checkpoint/torch-writer.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import type { LocalizationNetSpec } from '../../shared/models/localization-net/architecture.ts';
import { sampleStateDict } from '../../shared/models/localization-net/sample-weights.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { runInProcess } from '../../shared/pipeline/in-process.ts';
import type { RunReport } from '../../shared/pipeline/report.ts';
import { LocalModelRegistry } from '../../shared/registry/local.ts';
import { SMALL_SPEC } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';
import { startWebhookReceiver } from '../support/webhook-receiver.ts';

const NAME = 'heimdall-localization';
/** Wider late stages of the same architecture: at batch 1 about 1.37x slower than SMALL_SPEC on this machine (gate-statistics.test.ts checks that premise). */
const LARGER_SPEC: LocalizationNetSpec = { ...SMALL_SPEC, dims: [16, 32, 64, 96] };
/**
 * Batch 1, a short budget and one intra-op thread: both models on the same OS thread, so a 2-core
 * machine shared with other test files crowds them alike (gate-statistics.test.ts has the figures).
 */
const QUICK = { HEIMDALL_BENCHMARK_BATCHES: '1', HEIMDALL_BENCHMARK_BUDGET_MS: '300', HEIMDALL_BENCHMARK_THREADS: '1', HEIMDALL_PARITY_SAMPLES: '1' };

const dir = await tempDir('heimdall-gate-');
let webhook: Awaited<ReturnType<typeof startWebhookReceiver>>;
beforeAll(async () => {
  webhook = await startWebhookReceiver();
});
afterAll(async () => {
  await webhook?.close();
});

/** A checkpoint as the develop trainer saves it: `model_state_dict`, its `config`, and top-level scalars. */
async function developCheckpoint(name: string, spec: LocalizationNetSpec, seed: number, valLoss?: number): Promise<string> {
  const path = join(dir, `${name}.pth`);
  const weights = pyOrderedDict(sampleStateDict(spec, seed).map(({ name: key, tensor }) => [key, tensor] as const));
  const scalars: Record<string, PickleValue> = valLoss === undefined ? {} : { val_loss: pyFloat(valLoss), epoch: 12 };
  await writeTorchCheckpoint(path, pyDict({ model_state_dict: weights, config: pyDict({ learning_rate: pyFloat(0.001), batch_size: 32 }), ...scalars }));
  return path;
}

/** One checkpoint through every stage in this process, the alerts subscriber fed every event (as `heimdall run` does); the alerts it sent. */
async function run(checkpoint: string, dataDir: string, env: Record<string, string> = {}): Promise<{ report: RunReport; alerts: string[] }> {
  const config = loadConfig({ HEIMDALL_DATA_DIR: dataDir, HEIMDALL_ALERT_WEBHOOKS: webhook.url, ...QUICK, ...env });
  const logger = createLogger('silent');
  const alerts = alertsSubscriber.create(config, logger)!;
  const before = webhook.requests.length;
  const report = await runInProcess(checkpoint, { stages: stageFunctions, ...(await createAdapters(config)), config, logger, onEvent: (event) => alerts.accept(event) });
  await alerts.close(10_000);
  expect(report.error, JSON.stringify(report.error)).toBeUndefined();
  return { report, alerts: webhook.requests.slice(before).map((r) => (r.body as { text: string }).text) };
}

const types = (report: RunReport) => report.events.map((e) => e.type);
const check = (report: RunReport, name: string) => report.gate?.checks.find((c) => c.name === name);

describe('the metric check, on develop-layout checkpoints with val_loss', () => {
  const dataDir = join(dir, 'metric');
  let holder: RunReport;

  beforeAll(async () => {
    ({ report: holder } = await run(await developCheckpoint('holder', SMALL_SPEC, 1, 0.31), dataDir));
  }, 120_000);

  it('lets the first model of the name take the alias, announcing the move, with its val_loss on record', async () => {
    expect(holder.alias).toEqual({ name: 'staging', moved: true });
    expect(types(holder).at(-1)).toBe('heimdall.model.promoted');
    expect(holder.events.at(-1)).toMatchObject({ data: { version: '1', alias: 'staging', reason: 'gate passed' } });
    const version = await new LocalModelRegistry(dataDir).getVersion(NAME, '1');
    expect(version?.tags['training.val_loss']).toBe('0.31');
  });

  it('holds back a worse val_loss: registered, the alias left on the holder, no promotion, one alert naming the check', async () => {
    const { report, alerts } = await run(await developCheckpoint('worse', SMALL_SPEC, 2, 0.42), dataDir);
    expect(report.registry).toMatchObject({ version: '2', created: true });
    expect(report.gate?.passed).toBe(false);
    expect(check(report, 'metric')).toEqual({ name: 'metric', passed: false, value: 0.42, limit: 0.31, policy: 'block', detail: "val_loss 0.42 > v1's 0.31 + tolerance 0" });
    // The same architecture is no slower than itself: only the metric held it back.
    expect(check(report, 'latency')?.passed, check(report, 'latency')?.detail).toBe(true);
    expect(report.alias).toEqual({ name: 'staging', moved: false, previous: '1' });
    expect(types(report)).not.toContain('heimdall.model.promoted');
    expect((await new LocalModelRegistry(dataDir).getVersionByAlias(NAME, 'staging'))?.version).toBe('1');
    expect(alerts).toEqual([`Heimdall run ${report.runId}: ${NAME} v2 held back from @staging by metric: val_loss 0.42 &gt; v1's 0.31 + tolerance 0 (v1 keeps it)`]);
  });

  it('with HEIMDALL_GATE_METRIC_POLICY=warn, moves the alias to a worse val_loss and says so', async () => {
    const { report, alerts } = await run(await developCheckpoint('worse-warned', SMALL_SPEC, 3, 0.45), dataDir, { HEIMDALL_GATE_METRIC_POLICY: 'warn' });
    expect(report.gate?.passed).toBe(true);
    expect(check(report, 'metric')).toMatchObject({ passed: false, policy: 'warn', value: 0.45, limit: 0.31 });
    expect(report.alias).toEqual({ name: 'staging', moved: true, previous: '1' });
    expect(report.events.at(-1)).toMatchObject({ type: 'heimdall.model.promoted', data: { version: '3', previous: '1', reason: 'gate passed' } });
    const registry = new LocalModelRegistry(dataDir);
    expect((await registry.getVersionByAlias(NAME, 'staging'))?.version).toBe('3');
    expect((await registry.aliasHistory(NAME)).staging?.map((c) => c.version)).toEqual(['1', '3']);
    expect(alerts).toEqual([`Heimdall run ${report.runId}: ${NAME} v3 moved to @staging despite a warning from metric: val_loss 0.45 &gt; v1's 0.31 + tolerance 0`]);
  });
});

describe('the latency check, on a larger variant under the same name', () => {
  it('holds back the slower model: registered, gate failed on latency, the alias left on the fast one, no promotion, one alert', async () => {
    const dataDir = join(dir, 'latency');
    const fast = await run(await developCheckpoint('fast', SMALL_SPEC, 5), dataDir);
    expect(fast.report.alias?.moved).toBe(true);
    expect(fast.alerts).toEqual([]);

    const { report, alerts } = await run(await developCheckpoint('slow', LARGER_SPEC, 5), dataDir);
    const baseline = report.benchmark?.baseline;
    expect(baseline, 'the benchmark timed the alias holder beside the candidate').toMatchObject({ version: '1', regression: true });
    expect(report.registry).toMatchObject({ version: '2', created: true });
    expect(report.gate?.passed).toBe(false);
    expect(check(report, 'latency')).toMatchObject({ passed: false, policy: 'block', value: baseline!.ratioInterval[0], limit: 1.1 });
    expect(baseline!.ratioInterval[0]).toBeGreaterThan(1.1);
    expect(report.alias).toEqual({ name: 'staging', moved: false, previous: '1' });
    expect(types(report)).not.toContain('heimdall.model.promoted');
    expect((await new LocalModelRegistry(dataDir).getVersionByAlias(NAME, 'staging'))?.version).toBe('1');
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatch(new RegExp(`^Heimdall run ${report.runId}: ${NAME} v2 held back from @staging by latency: \\d+\\.\\d\\dx \\[\\d+\\.\\d\\d, \\d+\\.\\d\\d\\] of v1 &gt; 1\\.10 \\(v1 keeps it\\)$`));
  }, 120_000);
});
