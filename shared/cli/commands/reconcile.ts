import { loadConfig } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { createLogger } from '../../logging/index.ts';
import { createAdapters } from '../../pipeline/adapters.ts';
import { connectRuntime } from '../../pipeline/nats/runtime.ts';
import { DEFAULT_SWEEP_LIMIT, embeddedSweepPorts, natsSweepPorts, sweep, type SkipReason, type SweepReport } from '../../pipeline/reconcile.ts';
import { isBucketName } from '../../storage/object-store.ts';
import { parseCommandArgs } from '../args.ts';
import { formatSeconds } from '../format.ts';
import type { CliEnvironment } from '../main.ts';
import { signalExitCode, watchStopSignals } from '../signals.ts';

export const reconcileUsage = `heimdall reconcile [--bucket B] [--prefix P] [--limit N (default ${DEFAULT_SWEEP_LIMIT})] [--json]`;

/**
 * One reconciliation sweep (DESIGN §3), now: the checkpoint bucket listed, a run started for each
 * upload whose notification never came. On NATS the runs are queued for the ingest workers (what
 * MinIO would have sent); on the embedded default they run here, one after another. Prints what it
 * started and what it skipped, with counts; with `--json` the last line is the report.
 */
export async function reconcileCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, reconcileUsage, { bucket: { type: 'string' }, prefix: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' } });
  if (positionals.length > 0) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${reconcileUsage}`);
  const limit = values.limit === undefined ? DEFAULT_SWEEP_LIMIT : Number(values.limit);
  if (!Number.isInteger(limit) || limit < 1) throw new HeimdallError(ErrorCodes.USAGE, `--limit ${values.limit} is not a positive whole number`);
  const config = loadConfig();
  const bucket = values.bucket ?? config.reconcile.bucket;
  if (!isBucketName(bucket)) throw new HeimdallError(ErrorCodes.USAGE, `--bucket ${bucket} is not a bucket name`);
  const logger = createLogger(config.logLevel);
  const options = { bucket, ...(values.prefix ? { prefix: values.prefix } : {}), limit, logger };
  let report: SweepReport;
  let stopped: NodeJS.Signals | undefined;
  if (config.nats) {
    const runtime = await connectRuntime(config, logger, `heimdall-reconcile-${process.pid}`, 'client');
    try {
      report = await sweep(await natsSweepPorts(runtime), options);
    } finally {
      await runtime.close();
    }
  } else {
    // The runs happen here: a stop ends the one in flight as `heimdall run` does, and no other starts.
    const stop = watchStopSignals(`reconcile of ${bucket}`, env.io.stderr);
    const subscribers = env.subscribers.flatMap((f) => f.create(config, logger) ?? []);
    try {
      const ports = embeddedSweepPorts(
        { stages: env.stages, ...(await createAdapters(config)), config, logger, signal: stop.signal, onEvent: (event) => subscribers.forEach((s) => void s.accept(event)) },
        env.ingest,
      );
      report = await sweep(ports, { ...options, signal: stop.signal });
      await Promise.all(subscribers.map((s) => s.close(stop.received ? 1000 : 10_000)));
      stopped = stop.received;
    } finally {
      stop.dispose();
    }
  }
  for (const line of reportLines(report)) env.io.stdout(line);
  if (values.json) env.io.stdout(JSON.stringify(report));
  return stopped ? signalExitCode(stopped) : 0;
}

const SKIP_WORDS: Readonly<Record<SkipReason, string>> = {
  announced: 'already announced',
  failed: 'failed at ingest before',
  repeat: 'queued by an earlier sweep',
  recent: 'too recent',
  forgotten: 'older than the marks are kept',
  ignored: 'not a checkpoint',
};

/** A summary line, then one line per run started. */
export function reportLines(report: SweepReport): string[] {
  const where = `${report.bucket}/${report.prefix}`;
  if (report.held) return [`reconcile of ${where} skipped: another process is sweeping (${report.held.owner}, lease until ${report.held.until})`];
  const skipped = Object.entries(report.skipped).filter(([, n]) => n > 0);
  const total = skipped.reduce((sum, [, n]) => sum + n, 0);
  const summary = `reconcile of ${where}: ${report.listed} listed, ${report.started.length} started, ${total} skipped${total > 0 ? ` (${skipped.map(([reason, n]) => `${n} ${SKIP_WORDS[reason as SkipReason]}`).join(', ')})` : ''} in ${formatSeconds(report.durationMs)}${report.truncated ? '; stopped early (limit reached or stopping): run again for the rest' : ''}`;
  return [
    summary,
    ...report.started.map((run) => {
      if (run.kind !== 'ran') return `  queued  ${run.key}`;
      return `  ran     ${run.key} -> run ${run.runId} ${run.status === 'registered' ? 'registered' : `failed at ${run.error?.stage}: ${run.error?.code}`}`;
    }),
  ];
}
