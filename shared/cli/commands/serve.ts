import { DRAIN_TIMEOUT_MS, withoutCredentials } from '../../bus/nats/connection.ts';
import { loadConfig } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { createLogger } from '../../logging/index.ts';
import { STAGES, type StageName } from '../../pipeline/stage.ts';
import { parseCommandArgs } from '../args.ts';
import { eventLines } from '../event-line.ts';
import { formatSeconds } from '../format.ts';
import type { CliEnvironment } from '../main.ts';
import { ProgressLine } from '../progress.ts';
import { startServing } from '../serving.ts';
import { untilStopSignal } from '../signals.ts';

export const serveUsage = `heimdall serve [--stages ${STAGES.join(',')}] [--http] [--dashboard [--port N] [--host H]]`;

const DEFAULT_DASHBOARD_PORT = 8400;

/**
 * Runs stages as workers on NATS (NATS_URL) until SIGTERM or SIGINT, then drains: no new message is
 * taken, the in-flight one finishes (or is handed back after the ack wait) and the connection is
 * flushed. Several processes may serve the same stage; they share its durable consumer. `--http`
 * runs each stage as an HTTP function behind a local broker instead; `--dashboard` adds the status
 * page (alone, without NATS, over the embedded default's runs). A process serving ingest also sweeps
 * the checkpoint bucket every HEIMDALL_RECONCILE_INTERVAL for uploads whose notification was lost.
 */
export async function serveCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, serveUsage, {
    stages: { type: 'string' },
    http: { type: 'boolean' },
    dashboard: { type: 'boolean' },
    port: { type: 'string' },
    host: { type: 'string' },
  });
  if (positionals.length > 0) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${serveUsage}`);
  const config = loadConfig();
  if (!config.nats && !values.dashboard) throw new HeimdallError(ErrorCodes.USAGE, 'NATS_URL is not set: serve runs workers on NATS (the embedded default is `heimdall run`; `serve --dashboard` alone shows its runs)');
  const names = config.nats ? parseStages(values.stages) : [];
  const port = values.port === undefined ? DEFAULT_DASHBOARD_PORT : Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new HeimdallError(ErrorCodes.USAGE, `--port ${values.port} is not a port number`);
  const logger = createLogger(config.logLevel);
  const progress = new Map<StageName, ProgressLine>();
  const serving = await startServing({
    config,
    logger,
    stages: env.stages,
    ingest: env.ingest,
    subscribers: env.subscribers,
    names,
    http: Boolean(values.http),
    ...(values.dashboard ? { dashboard: { port, ...(values.host ? { host: values.host } : {}) } } : {}),
    ...(config.sink ? { sink: config.sink } : {}),
    onProgress: (stage, message) => {
      if (!progress.has(stage)) progress.set(stage, new ProgressLine(stage.padEnd(9)));
      progress.get(stage)!.update(message);
    },
    onEvent: (event) => {
      for (const line of progress.values()) line.done();
      progress.clear();
      for (const line of eventLines(event)) env.io.stdout(line);
    },
  });
  const parts = [
    names.length > 0 ? `serving ${names.join(', ')}${values.http ? ` as HTTP functions (${Object.entries(serving.functionPorts).map(([s, p]) => `${s}:${p}`).join(' ')}) behind a local broker` : ''} on ${withoutCredentials(config.nats!.url)}` : '',
    serving.dashboardUrl ? `status page ${serving.dashboardUrl}` : '',
    serving.reconcile ? `reconciling bucket ${serving.reconcile.bucket} every ${formatSeconds(serving.reconcile.intervalMs)}` : '',
  ].filter(Boolean);
  env.io.stderr(`${parts.join('; ')}; SIGTERM or Ctrl-C drains and stops`);
  // A bug that escapes a message's handling (a stray rejected promise) is logged, not a crash of
  // every worker in this process; the message it belonged to is redelivered after its ack wait.
  const onStray = (error: unknown) => logger.error({ err: error }, 'unhandled rejection (worker kept running)');
  process.on('unhandledRejection', onStray);
  const signal = await untilStopSignal();
  const limitMs = serving.graceMs + STOP_MARGIN_MS;
  env.io.stderr(`draining: finishing in-flight work (${signal}; at most ${formatSeconds(limitMs)})`);
  // The stop is bounded step by step (grace period, drain deadline); this is the backstop, should a
  // library call still not return: the process ends within its grace period regardless.
  const backstop = setTimeout(() => {
    env.io.stderr(`error: ${ErrorCodes.ABORTED}: did not stop within ${formatSeconds(limitMs)}; exiting (unacknowledged messages are redelivered)`);
    process.exit(1);
  }, limitMs);
  backstop.unref();
  const started = performance.now();
  await serving.stop();
  clearTimeout(backstop);
  process.off('unhandledRejection', onStray);
  env.io.stderr(`stopped in ${formatSeconds(performance.now() - started)}`);
  return 0;
}

/** Past the grace period: the processor's hand-back, the connection's drain deadline and a second to spare. */
const STOP_MARGIN_MS = 1000 + DRAIN_TIMEOUT_MS + 1000;

function parseStages(list: string | undefined): StageName[] {
  if (!list) return [...STAGES];
  const names = list.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((n) => !(STAGES as readonly string[]).includes(n));
  if (unknown.length > 0 || names.length === 0) throw new HeimdallError(ErrorCodes.USAGE, `unknown stage ${unknown.join(', ') || '(none)'}; stages: ${STAGES.join(', ')}`);
  return [...new Set(names)] as StageName[];
}
