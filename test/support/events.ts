import { createEvent, type Baseline, type GateVerdict, type LatencyStats } from '../../shared/events/index.ts';
import type { AnyStage } from '../../shared/pipeline/stage.ts';
import { isRegression, minSamplesForPercentile } from '../../shared/gate/statistics.ts';

/** Valid pipeline events with chosen figures, for tests of what subscribers make of them. */
const sha = (runId: string) => runId.padEnd(64, '0');
const refs = (runId: string) => ({
  checkpoint: { uri: `s3://heimdall-checkpoints/${runId}/model.pth`, sha256: sha(runId), format: 'torch-zip' as const },
  onnx: { uri: `s3://heimdall-models/models/localization/${runId}/model.onnx`, sha256: sha(runId).split('').reverse().join(''), bytes: 153_000, opset: 14, irVersion: 7 },
});

/** Figures of `n` timed runs (p50 interval ±3 %); p90 and p99 only where the benchmark's rule reports them for that n. */
export function latency(batch: number, p50: number, p99 = p50 * 1.5, n = 1000): LatencyStats {
  return {
    batch,
    n,
    p50,
    p50Interval: [p50 * 0.97, p50 * 1.03],
    ...(n >= minSamplesForPercentile(0.9) ? { p90: (p50 + p99) / 2 } : {}),
    ...(n >= minSamplesForPercentile(0.99) ? { p99 } : {}),
    mean: p50,
    throughput: (batch * 1000) / p50,
  };
}

/**
 * An alias holder timed beside the candidate at batch-1 p50 `p50`: the ratio is the candidate's
 * batch-1 p50 over it, its interval ±3 % unless given, `regression` by the gate's rule.
 */
export interface BaselineFigures {
  readonly version: string;
  readonly p50: number;
  readonly threshold: number;
  readonly ratioInterval?: [number, number];
}

export function benchmarkedEvent(runId: string, perBatch: LatencyStats[], baseline?: BaselineFigures) {
  return createEvent('heimdall.model.benchmarked', {
    stage: 'benchmark',
    source: 'heimdall/benchmark',
    data: {
      runId,
      ...refs(runId),
      provider: 'cpu',
      threads: 2,
      sessionCreateMs: 12,
      perBatch,
      ...(baseline ? { baseline: baselineOf(perBatch, baseline) } : {}),
      parity: { reference: 'reference-impl', samples: 4, perOutput: { positions: { maxAbs: 6e-8, meanAbs: 1e-8 } }, tolerance: 1e-5, passed: true },
      warnings: [],
    },
  });
}

function baselineOf(perBatch: readonly LatencyStats[], figures: BaselineFigures): Baseline {
  const ratio = perBatch.find((s) => s.batch === 1)!.p50 / figures.p50;
  const ratioInterval = figures.ratioInterval ?? [ratio * 0.97, ratio * 1.03];
  return {
    version: figures.version,
    sha256: 'b'.repeat(64),
    perBatch: [latency(1, figures.p50)],
    ratio,
    ratioInterval,
    regression: isRegression(ratioInterval, figures.threshold),
    threshold: figures.threshold,
  };
}

/** A registration; by default the gate passed with no checks (a first model) and the alias moved to it. */
export function registeredEvent(runId: string, version: string, created = true, gate: GateVerdict = { passed: true, checks: [] }, previous?: string) {
  return createEvent('heimdall.model.registered', {
    stage: 'register',
    source: 'heimdall/register',
    data: {
      runId,
      registry: { name: 'heimdall-localization', version, runId: `mlflow-${runId}`, modelUri: `models:/heimdall-localization/${version}`, created },
      gate,
      alias: { name: 'staging', moved: gate.passed, ...(previous ? { previous } : {}) },
      onnx: refs(runId).onnx,
    },
  });
}

/** A register stage straight after ingest that registers version 2, its gate moving the alias from version 1 or not: what follows a result is the runners' business. */
export function registerStage(moved: boolean): AnyStage {
  return {
    name: 'register',
    input: 'heimdall.checkpoint.created',
    output: 'heimdall.model.registered',
    handler: async (event) => registeredEvent(event.data.runId, '2', true, { passed: moved, checks: [] }, '1'),
  };
}
