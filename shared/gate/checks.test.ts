import { describe, expect, it } from 'vitest';
import type { GateConfig } from '../config/index.ts';
import { loadConfig } from '../config/index.ts';
import type { Baseline, Training } from '../events/schemas.ts';
import { decideGate } from './checks.ts';

const holder = { version: '4', tags: { 'training.val_loss': '0.31', 'training.val_acc': '0.9' } };
const blocking: GateConfig = loadConfig({}).gate;

function baseline(ratio: number, interval: [number, number], threshold = 0.1, version = '4'): Baseline {
  const stats = { batch: 1, n: 40, p50: 10, p50Interval: [9.8, 10.2] as [number, number], mean: 10.1, throughput: 99 };
  return { version, sha256: 'a'.repeat(64), perBatch: [stats], ratio, ratioInterval: interval, regression: interval[0] > 1 + threshold, threshold };
}
const training = (metrics: Record<string, number>): Training => ({ metrics, hyperParameters: {} });

describe('decideGate', () => {
  it('reads the default configuration as a blocking latency check and a blocking val_loss:min check', () => {
    expect(blocking).toEqual({ latency: 'block', metric: { name: 'val_loss', better: 'lower', tolerance: 0, policy: 'block' } });
  });

  it('holds back a model whose batch-1 p50 ratio interval lies wholly past 1 + threshold', () => {
    const verdict = decideGate({ config: blocking, holder, baseline: baseline(1.31, [1.27, 1.36]), training: training({ val_loss: 0.3 }) });
    expect(verdict.passed).toBe(false);
    expect(verdict.checks[0]).toEqual({ name: 'latency', passed: false, value: 1.27, limit: 1.1, policy: 'block', detail: '1.31x [1.27, 1.36] of v4 > 1.10' });
    expect(verdict.checks[1]).toMatchObject({ name: 'metric', passed: true });
  });

  it('passes a model whose ratio is past the threshold but whose interval reaches below it (not shown to be slower)', () => {
    const verdict = decideGate({ config: blocking, holder, baseline: baseline(1.14, [1.05, 1.22]), training: training({ val_loss: 0.3 }) });
    expect(verdict).toMatchObject({ passed: true, checks: [{ name: 'latency', passed: true, value: 1.05, limit: 1.1, detail: '1.14x [1.05, 1.22] of v4 <= 1.10' }, { name: 'metric', passed: true }] });
  });

  it('holds back a worse val_loss beyond the tolerance, and passes one within it', () => {
    const worse = decideGate({ config: blocking, holder, baseline: baseline(1, [0.97, 1.03]), training: training({ val_loss: 0.42 }) });
    expect(worse.passed).toBe(false);
    expect(worse.checks[1]).toEqual({ name: 'metric', passed: false, value: 0.42, limit: 0.31, policy: 'block', detail: "val_loss 0.42 > v4's 0.31 + tolerance 0" });
    const tolerant: GateConfig = { ...blocking, metric: { ...blocking.metric!, tolerance: 0.15 } };
    const within = decideGate({ config: tolerant, holder, baseline: baseline(1, [0.97, 1.03]), training: training({ val_loss: 0.42 }) });
    expect(within.passed).toBe(true);
    expect(within.checks[1]).toMatchObject({ passed: true, value: 0.42, limit: expect.closeTo(0.46, 12), detail: "val_loss 0.42 <= v4's 0.31 + tolerance 0.15" });
  });

  it('compares a metric where higher is better the other way', () => {
    const config: GateConfig = { latency: 'off', metric: { name: 'val_acc', better: 'higher', tolerance: 0.01, policy: 'block' } };
    const lower = decideGate({ config, holder, training: training({ val_acc: 0.85 }) });
    expect(lower).toEqual({ passed: false, checks: [{ name: 'metric', passed: false, value: 0.85, limit: expect.closeTo(0.89, 12), policy: 'block', detail: "val_acc 0.85 < v4's 0.9 - tolerance 0.01" }] });
    expect(decideGate({ config, holder, training: training({ val_acc: 0.895 }) }).passed).toBe(true);
  });

  it('lets a failed warn-policy check through, still reporting it failed', () => {
    const config: GateConfig = { latency: 'warn', metric: { ...blocking.metric!, policy: 'warn' } };
    const verdict = decideGate({ config, holder, baseline: baseline(1.5, [1.4, 1.6]), training: training({ val_loss: 0.5 }) });
    expect(verdict.passed).toBe(true);
    expect(verdict.checks.map((c) => [c.name, c.passed, c.policy])).toEqual([
      ['latency', false, 'warn'],
      ['metric', false, 'warn'],
    ]);
  });

  it('passes the first model of a name, saying there was nothing to compare', () => {
    const verdict = decideGate({ config: blocking, training: training({ val_loss: 9 }) });
    expect(verdict.passed).toBe(true);
    expect(verdict.checks).toEqual([
      { name: 'latency', passed: true, value: null, limit: null, policy: 'block', detail: 'first model of its name: nothing to compare with' },
      { name: 'metric', passed: true, value: null, limit: null, policy: 'block', detail: 'first model of its name: nothing to compare with' },
    ]);
  });

  it('passes a check that has nothing to compare, naming what was missing', () => {
    const details = (inputs: Omit<Parameters<typeof decideGate>[0], 'config'>) => decideGate({ config: blocking, ...inputs }).checks.map((c) => [c.passed, c.value, c.detail]);
    expect(details({ holder })).toEqual([
      [true, null, 'not compared: the benchmark did not time v4'],
      [true, null, 'val_loss not compared: the candidate has none'],
    ]);
    expect(details({ holder: { version: '4', tags: {} }, baseline: baseline(1.02, [0.99, 1.05], 0.1, '3'), training: training({ val_loss: 0.2 }) })).toEqual([
      [true, 0.99, '1.02x [0.99, 1.05] of v3 <= 1.10; v4 holds the alias now, not timed'],
      [true, null, 'val_loss not compared: v4 has none'],
    ]);
  });

  it('holds back a model found slower than an earlier holder even when another run has moved the alias since (no pass by a race)', () => {
    const verdict = decideGate({ config: blocking, holder: { version: '4', tags: {} }, baseline: baseline(2, [1.9, 2.1], 0.1, '3') });
    expect(verdict.passed).toBe(false);
    expect(verdict.checks[0]).toMatchObject({ name: 'latency', passed: false, value: 1.9, limit: 1.1, detail: '2.00x [1.90, 2.10] of v3 > 1.10; v4 holds the alias now, not timed' });
  });

  it('omits the checks that are off', () => {
    expect(decideGate({ config: { latency: 'off' }, holder, baseline: baseline(3, [2.9, 3.1]), training: training({ val_loss: 1 }) })).toEqual({ passed: true, checks: [] });
  });

  it("holds a variant to its tolerance against the fp32 model, whatever the alias holder's figures", () => {
    const within = decideGate({ config: blocking, accuracy: { maxAbs: 3.2e-3, tolerance: 5e-2 } });
    expect(within).toEqual({ passed: true, checks: [expect.objectContaining({ name: 'latency', passed: true }), expect.objectContaining({ name: 'metric', passed: true }), { name: 'accuracy', passed: true, value: 3.2e-3, limit: 5e-2, policy: 'block', detail: 'max |diff| 3.20e-3 against the fp32 model <= tolerance 0.05' }] });
    const over = decideGate({ config: { latency: 'off' }, holder, baseline: baseline(0.5, [0.48, 0.52]), accuracy: { maxAbs: 0.2, tolerance: 5e-2 } });
    expect(over).toEqual({ passed: false, checks: [{ name: 'accuracy', passed: false, value: 0.2, limit: 5e-2, policy: 'block', detail: 'max |diff| 2.00e-1 against the fp32 model > tolerance 0.05' }] });
  });
});
