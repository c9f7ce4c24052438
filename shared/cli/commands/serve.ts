import { loadConfig } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { createLogger } from '../../logging/index.ts';
import { connectRuntime } from '../../pipeline/nats/runtime.ts';
import { startWorkers } from '../../pipeline/nats/workers.ts';
import { STAGES, type StageName } from '../../pipeline/stage.ts';
import { parseCommandArgs } from '../args.ts';
import { eventLine } from '../event-line.ts';
import type { CliEnvironment } from '../main.ts';
import { ProgressLine } from '../progress.ts';

export const serveUsage = `heimdall serve [--stages ${STAGES.join(',')}]`;

/**
 * Runs stages as workers on NATS (NATS_URL) until SIGTERM or SIGINT, then drains: no new message is
 * taken, the in-flight one finishes (or is handed back after the ack wait) and the connection is
 * flushed. Several processes may serve the same stage; they share its durable consumer.
 */
export async function serveCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, serveUsage, { stages: { type: 'string' } });
  if (positionals.length > 0) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${serveUsage}`);
  const names = parseStages(values.stages);
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const runtime = await connectRuntime(config, logger, `heimdall-serve-${process.pid}`);
  const progress = new Map<StageName, ProgressLine>();
  const workers = await startWorkers({
    runtime,
    stages: env.stages,
    ingest: env.ingest,
    names,
    logger,
    onProgress: (stage, message) => {
      if (!progress.has(stage)) progress.set(stage, new ProgressLine(stage.padEnd(9)));
      progress.get(stage)!.update(message);
    },
    onEvent: (event) => {
      for (const line of progress.values()) line.done();
      progress.clear();
      env.io.stdout(eventLine(event));
    },
  });
  env.io.stderr(`serving ${names.join(', ')} on ${config.nats!.url}; SIGTERM or Ctrl-C drains and stops`);
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  env.io.stderr('draining: finishing in-flight work');
  await workers.stop();
  await runtime.close();
  return 0;
}

function parseStages(list: string | undefined): StageName[] {
  if (!list) return [...STAGES];
  const names = list.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((n) => !(STAGES as readonly string[]).includes(n));
  if (unknown.length > 0 || names.length === 0) throw new HeimdallError(ErrorCodes.USAGE, `unknown stage ${unknown.join(', ') || '(none)'}; stages: ${STAGES.join(', ')}`);
  return [...new Set(names)] as StageName[];
}
