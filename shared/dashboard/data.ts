import type { z } from 'zod';
import { ModelBenchmarked, ModelExported, ModelParityChecked, ModelRegistered } from '../events/index.ts';
import type { RunState, RunStateStore, StageRecord } from '../pipeline/run-state/run-state.ts';
import { STAGES, type StageName } from '../pipeline/stage.ts';

/** Newest runs on the page; older ones stay in the store and in `/api/runs`. */
const MAX_RUNS = 50;
/** Latest registered versions on the chart: more would not fit its width. */
const MAX_VERSIONS = 20;

/**
 * What the status page shows, gathered from the RunStateStore alone (files when embedded, the KV
 * bucket on NATS). Figures are read from each stage's last event through the events' own schemas
 * (parts of them), so a record written by another version of Heimdall shows what it can and no more.
 */
export interface DashboardData {
  readonly generatedAt: string;
  readonly counts: Readonly<Record<RunState['status'], number>>;
  readonly runs: readonly RunView[];
  readonly versions: readonly VersionPoint[];
}

export interface StageView {
  readonly name: StageName;
  readonly status: StageRecord['status'] | 'pending';
  readonly attempts: number;
  readonly durationMs?: number;
}

export interface RunView {
  readonly runId: string;
  readonly status: RunState['status'];
  readonly checkpoint?: RunState['checkpoint'];
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly stages: readonly StageView[];
  readonly error?: RunState['error'];
  readonly export?: z.infer<typeof ExportFigures>;
  readonly parity?: z.infer<typeof ParityFigures>;
  readonly benchmark?: z.infer<typeof BenchmarkFigures>;
  readonly registry?: z.infer<typeof RegistryFigures>['registry'];
}

/** One registered model version on the latency chart. */
export interface VersionPoint {
  readonly name: string;
  readonly version: string;
  readonly runId: string;
  readonly registeredAt: string;
  readonly perBatch: ReadonlyArray<{ readonly batch: number; readonly p50: number; readonly p99: number }>;
}

const ExportFigures = ModelExported.pick({ architecture: true, onnx: true, durationMs: true });
const ParityFigures = ModelParityChecked.pick({ reference: true, samples: true, perOutput: true, tolerance: true, passed: true });
const BenchmarkFigures = ModelBenchmarked.pick({ provider: true, threads: true, perBatch: true, baseline: true });
const RegistryFigures = ModelRegistered.pick({ registry: true });

export async function gatherDashboard(store: RunStateStore, now = new Date()): Promise<DashboardData> {
  const runs = await store.list();
  const counts = { running: 0, registered: 0, failed: 0 };
  for (const run of runs) counts[run.status]++;
  return { generatedAt: now.toISOString(), counts, runs: runs.slice(0, MAX_RUNS).map(runView), versions: registeredVersions(runs) };
}

export function runView(run: RunState): RunView {
  const figures = <S extends z.ZodType>(stage: StageName, schema: S): z.infer<S> | undefined => {
    const record = run.stages[stage];
    if (record?.status !== 'done') return undefined;
    const parsed = schema.safeParse(record.event?.data);
    return parsed.success ? parsed.data : undefined;
  };
  const registered = figures('register', RegistryFigures);
  return {
    runId: run.runId,
    status: run.status,
    checkpoint: run.checkpoint,
    createdAt: run.createdAt,
    updatedAt: run.updatedAt,
    stages: STAGES.map((name) => stageView(name, run.stages[name])),
    error: run.error,
    export: figures('export', ExportFigures),
    parity: figures('parity', ParityFigures),
    benchmark: figures('benchmark', BenchmarkFigures),
    registry: registered?.registry,
  };
}

function stageView(name: StageName, record: StageRecord | undefined): StageView {
  if (!record) return { name, status: 'pending', attempts: 0 };
  const durationMs = record.startedAt && record.finishedAt ? Date.parse(record.finishedAt) - Date.parse(record.startedAt) : undefined;
  return { name, status: record.status, attempts: record.attempts, ...(durationMs === undefined ? {} : { durationMs }) };
}

/** One point per registered version (the run that created it), oldest first. */
export function registeredVersions(runs: readonly RunState[]): VersionPoint[] {
  const points = new Map<string, { point: VersionPoint; created: boolean }>();
  for (const run of runs) {
    const view = runView(run);
    if (!view.registry || !view.benchmark) continue;
    const { name, version, created } = view.registry;
    const key = `${name}@${version}`;
    // The same model registered again (same sha256) reports the existing version: keep the run that created it.
    if (points.get(key)?.created && !created) continue;
    const registeredAt = run.stages.register?.finishedAt ?? run.updatedAt;
    const perBatch = view.benchmark.perBatch.map(({ batch, p50, p99 }) => ({ batch, p50, p99 }));
    points.set(key, { point: { name, version, runId: run.runId, registeredAt, perBatch }, created });
  }
  return [...points.values()]
    .map(({ point }) => point)
    .sort((a, b) => a.registeredAt.localeCompare(b.registeredAt) || Number(a.version) - Number(b.version))
    .slice(-MAX_VERSIONS);
}
