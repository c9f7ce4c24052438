import type { Config } from '../../config/index.ts';
import type { Logger } from '../../logging/index.ts';
import { FsRunStateStore } from './fs.ts';
import type { RunStateStore } from './run-state.ts';

/**
 * The run state of the configured pipeline: the `heimdall_runs` KV bucket on NATS, else the
 * embedded default's files. `close` releases the NATS connection.
 */
export async function openRunState(config: Config, logger: Logger): Promise<{ runState: RunStateStore; close(): Promise<void> }> {
  if (!config.nats) return { runState: new FsRunStateStore(config.dataDir), close: async () => undefined };
  const { connectRuntime } = await import('../nats/runtime.ts');
  const runtime = await connectRuntime(config, logger, `heimdall-cli-${process.pid}`, 'client');
  return { runState: runtime.runState, close: () => runtime.close() };
}

/** A run by full id or unique prefix (event lines show 8 digits). */
export async function findRun(runState: RunStateStore, id: string) {
  const exact = await runState.get(id);
  if (exact) return { run: exact, candidates: [] as string[] };
  const candidates = (await runState.list()).filter((r) => r.runId.startsWith(id));
  return { run: candidates.length === 1 ? candidates[0] : undefined, candidates: candidates.map((r) => r.runId) };
}
