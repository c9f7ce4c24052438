import { createEvent, type LatencyStats } from '../../shared/events/index.ts';

/** Valid pipeline events with chosen figures, for tests of what subscribers make of them. */
const sha = (runId: string) => runId.padEnd(64, '0');
const refs = (runId: string) => ({
  checkpoint: { uri: `s3://heimdall-checkpoints/${runId}/model.pth`, sha256: sha(runId), format: 'torch-zip' as const },
  onnx: { uri: `s3://heimdall-models/models/localization/${runId}/model.onnx`, sha256: sha(runId).split('').reverse().join(''), bytes: 153_000, opset: 14, irVersion: 7 },
});

export function latency(batch: number, p50: number, p99 = p50 * 1.5): LatencyStats {
  return { batch, p50, p90: (p50 + p99) / 2, p99, mean: p50, throughput: (batch * 1000) / p50 };
}

export function benchmarkedEvent(runId: string, perBatch: LatencyStats[], baseline?: { version: string; p50: number; threshold: number }) {
  const p50 = perBatch.find((s) => s.batch === 1)!.p50;
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
      ...(baseline ? { baseline: { ...baseline, ratio: p50 / baseline.p50, regression: p50 > baseline.p50 * (1 + baseline.threshold) } } : {}),
      parity: { reference: 'reference-impl', samples: 4, perOutput: { positions: { maxAbs: 6e-8, meanAbs: 1e-8 } }, tolerance: 1e-5, passed: true },
      warnings: [],
    },
  });
}

export function registeredEvent(runId: string, version: string, created = true) {
  return createEvent('heimdall.model.registered', {
    stage: 'register',
    source: 'heimdall/register',
    data: { runId, registry: { name: 'heimdall-localization', version, alias: 'staging', runId: `mlflow-${runId}`, modelUri: `models:/heimdall-localization/${version}`, created }, onnx: refs(runId).onnx },
  });
}
