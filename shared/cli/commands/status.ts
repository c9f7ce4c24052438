import { loadConfig } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { createLogger } from '../../logging/index.ts';
import { findRun, openRunState } from '../../pipeline/run-state/open.ts';
import type { RunState } from '../../pipeline/run-state/run-state.ts';
import { STAGES } from '../../pipeline/stage.ts';
import { parseCommandArgs } from '../args.ts';
import { describeEvent } from '../event-line.ts';
import { formatBytes, formatSeconds } from '../format.ts';
import type { CliEnvironment } from '../main.ts';
import type { AnyCloudEvent } from '../../events/index.ts';

export const statusUsage = 'heimdall status [runId] [--json]';

/** Runs and where they stand, from the KV bucket on NATS or the embedded default's files. */
export async function statusCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { positionals, values } = parseCommandArgs(argv, statusUsage, { json: { type: 'boolean' } });
  if (positionals.length > 1) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${statusUsage}`);
  const config = loadConfig();
  const { runState, close } = await openRunState(config, createLogger(config.logLevel));
  try {
    const [id] = positionals;
    if (id) {
      const { run, candidates } = await findRun(runState, id);
      if (!run) throw new HeimdallError(ErrorCodes.USAGE, candidates.length > 1 ? `run ${id} is ambiguous: ${candidates.join(', ')}` : `no run ${id}`);
      env.io.stdout(values.json ? JSON.stringify(run) : runDetail(run));
      return run.status === 'failed' ? 1 : 0;
    }
    const runs = await runState.list();
    if (values.json) env.io.stdout(JSON.stringify(runs));
    else env.io.stdout(runs.length === 0 ? 'no runs yet' : runs.map(runLine).join('\n'));
    return 0;
  } finally {
    await close();
  }
}

/** One line per run, 80 columns: id, status, current or failed stage, checkpoint. */
export function runLine(run: RunState): string {
  const at = [...STAGES].reverse().find((s) => run.stages[s]) ?? '-';
  const where = run.status === 'failed' ? `${run.error?.stage ?? at} ${run.error?.code ?? ''}` : run.status === 'running' ? `at ${at}` : '';
  return `${run.updatedAt.slice(0, 19).replace('T', ' ')} ${run.runId} ${run.status.padEnd(10)} ${where.padEnd(24)} ${run.checkpoint?.key ?? ''}`.trimEnd();
}

function runDetail(run: RunState): string {
  const lines = [`run ${run.runId}: ${run.status}${run.checkpoint ? ` — ${run.checkpoint.bucket}/${run.checkpoint.key} (${formatBytes(run.checkpoint.size)})` : ''}`];
  for (const stage of STAGES) {
    const record = run.stages[stage];
    if (!record) continue;
    const took = record.startedAt && record.finishedAt ? ` in ${formatSeconds(Date.parse(record.finishedAt) - Date.parse(record.startedAt))}` : '';
    const attempts = record.attempts > 1 ? ` (${record.attempts} attempts)` : '';
    const outcome = record.event ? describeEvent(record.event as AnyCloudEvent)[1] : 'running';
    lines.push(`  ${stage.padEnd(9)} ${record.status.padEnd(7)}${took}${attempts}  ${outcome}`);
  }
  if (run.error) lines.push(`  error: ${run.error.code}: ${run.error.message}`);
  return lines.join('\n');
}
