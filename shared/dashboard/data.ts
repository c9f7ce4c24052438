import type { z } from 'zod';
import { modelVersions } from '../registry/versions.ts';
import { ModelBenchmarked, ModelExported, ModelParityChecked, ModelRegistered, type LatencyStats } from '../events/index.ts';
import type { AliasChange, ModelRegistry } from '../registry/model-registry.ts';
import type { RunState, RunStateStore, StageRecord } from '../pipeline/run-state/run-state.ts';
import { STAGES, type StageName } from '../pipeline/stage.ts';

/** Newest runs on the page; older ones stay in the store and in `/api/runs`. */
const MAX_RUNS = 50;
/** Latest registered versions on the chart: more would not fit its width. */
const MAX_VERSIONS = 20;

/**
 * What the status page shows: runs from the RunStateStore (files when embedded, the KV bucket on
 * NATS), aliases from the model registry. Figures are read from each stage's last event through the
 * events' own schemas (parts of them), so a record written by another version of Heimdall shows
 * what it can and no more.
 */
export interface DashboardData {
  readonly generatedAt: string;
  readonly counts: Readonly<Record<RunState['status'], number>>;
  readonly runs: readonly RunView[];
  readonly versions: readonly VersionPoint[];
  readonly models: readonly ModelAliases[];
}

/** Where the page reads aliases: the configured registry and model name (variants' names come from the runs). */
export interface ModelsSource {
  readonly registry: ModelRegistry;
  readonly name: string;
}

/** Each alias of a model: who holds it now, and how it got there (newest move first). */
export interface ModelAliases {
  readonly name: string;
  readonly aliases: ReadonlyArray<{ readonly alias: string; readonly holder?: string; readonly moves: readonly AliasChange[] }>;
  /** Why the registry could not be read: the runs are still shown. */
  readonly error?: string;
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
  /** The version, the gate's verdict and whether the alias moved. */
  readonly registered?: z.infer<typeof RegistryFigures>;
}

/** One registered model version on the latency chart. */
export interface VersionPoint {
  readonly name: string;
  readonly version: string;
  readonly runId: string;
  readonly registeredAt: string;
  readonly perBatch: ReadonlyArray<Pick<LatencyStats, 'batch' | 'n' | 'p50' | 'p50Interval' | 'p99'>>;
}

const ExportFigures = ModelExported.pick({ architecture: true, onnx: true, durationMs: true });
const ParityFigures = ModelParityChecked.pick({ reference: true, samples: true, perOutput: true, tolerance: true, passed: true });
const BenchmarkFigures = ModelBenchmarked.pick({ provider: true, threads: true, perBatch: true, baseline: true });
const RegistryFigures = ModelRegistered.pick({ registry: true, gate: true, alias: true });

export async function gatherDashboard(store: RunStateStore, models: ModelsSource, now = new Date()): Promise<DashboardData> {
  const runs = await store.list();
  const counts = { running: 0, registered: 0, failed: 0 };
  for (const run of runs) counts[run.status]++;
  const versions = registeredVersions(runs);
  const names = [...new Set([models.name, ...versions.map((v) => v.name)])];
  return { generatedAt: now.toISOString(), counts, runs: runs.slice(0, MAX_RUNS).map(runView), versions, models: await Promise.all(names.map((name) => modelAliases(models.registry, name))) };
}

/** The holder of each alias that ever moved (or is set), with its moves newest first. */
export async function modelAliases(registry: ModelRegistry, name: string): Promise<ModelAliases> {
  try {
    const { versions, aliasHistory } = await modelVersions(registry, name);
    const aliases = [...new Set([...Object.keys(aliasHistory), ...versions.flatMap((v) => v.aliases)])].sort();
    return {
      name,
      aliases: aliases.map((alias) => {
        const holder = versions.find((v) => v.aliases.includes(alias))?.version;
        return { alias, ...(holder ? { holder } : {}), moves: [...(aliasHistory[alias] ?? [])].reverse() };
      }),
    };
  } catch (error) {
    return { name, aliases: [], error: (error as Error).message };
  }
}

export function runView(run: RunState): RunView {
  const figures = <S extends z.ZodType>(stage: StageName, schema: S): z.infer<S> | undefined => {
    const record = run.stages[stage];
    if (record?.status !== 'done') return undefined;
    const parsed = schema.safeParse(record.event?.data);
    return parsed.success ? parsed.data : undefined;
  };
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
    registered: figures('register', RegistryFigures),
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
    if (!view.registered || !view.benchmark) continue;
    const { name, version, created } = view.registered.registry;
    const key = `${name}@${version}`;
    // The same model registered again (same sha256) reports the existing version: keep the run that created it.
    if (points.get(key)?.created && !created) continue;
    const registeredAt = run.stages.register?.finishedAt ?? run.updatedAt;
    const perBatch = view.benchmark.perBatch.map(({ batch, n, p50, p50Interval, p99 }) => ({ batch, n, p50, p50Interval, ...(p99 === undefined ? {} : { p99 }) }));
    points.set(key, { point: { name, version, runId: run.runId, registeredAt, perBatch }, created });
  }
  return [...points.values()]
    .map(({ point }) => point)
    .sort((a, b) => a.registeredAt.localeCompare(b.registeredAt) || Number(a.version) - Number(b.version))
    .slice(-MAX_VERSIONS);
}
