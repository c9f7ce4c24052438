import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig, type Config } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { EVENT_TYPES, parseEvent, type AnyCloudEvent } from '../../events/index.ts';
import { createLogger, type Logger } from '../../logging/index.ts';
import { FsRunStateStore } from '../../pipeline/run-state/fs.ts';
import { parseCommandArgs } from '../args.ts';
import { eventLines } from '../event-line.ts';
import type { CliEnvironment } from '../main.ts';
import { untilStopSignal } from '../signals.ts';

export const watchUsage = 'heimdall watch [--run ID] [--type TYPE] [--all] [--json]';

const POLL_MS = 500;

/**
 * A live tail of pipeline events, one line each (time, run, stage, outcome, key figure), colored on a
 * terminal; `--json` prints each event as one JSON line. On NATS it follows the events stream; on
 * the embedded default it follows the run records `heimdall run` writes. Stops on SIGINT/SIGTERM.
 */
export async function watchCommand(argv: string[], env: CliEnvironment): Promise<number> {
  const { values, positionals } = parseCommandArgs(argv, watchUsage, {
    run: { type: 'string' },
    type: { type: 'string' },
    all: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  if (positionals.length > 0) throw new HeimdallError(ErrorCodes.USAGE, `usage: ${watchUsage}`);
  if (values.type && !EVENT_TYPES.some((t) => t.includes(values.type!))) throw new HeimdallError(ErrorCodes.USAGE, `no event type matches ${values.type}; types: ${EVENT_TYPES.join(', ')}`);
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const color = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
  const show = (event: AnyCloudEvent) => {
    if (values.run && !event.data.runId.startsWith(values.run)) return;
    if (values.type && !event.type.includes(values.type)) return;
    if (values.json) env.io.stdout(JSON.stringify(event));
    else for (const line of eventLines(event)) env.io.stdout(colored(line, event, color));
  };
  const stopped = untilStopSignal().then(() => undefined);
  await (config.nats ? followNats(config, logger, show, Boolean(values.all), stopped) : followFiles(config, show, Boolean(values.all), stopped));
  return 0;
}

async function followNats(config: Config, logger: Logger, show: (event: AnyCloudEvent) => void, all: boolean, stopped: Promise<void>): Promise<void> {
  const { connectRuntime } = await import('../../pipeline/nats/runtime.ts');
  const runtime = await connectRuntime(config, logger, `heimdall-watch-${process.pid}`, 'client');
  runtime.bus.subscribe('*', async (event) => show(event), { fromStart: all });
  await stopped;
  await runtime.close();
}

/** The embedded default has no bus between processes: the run records carry each stage's event and the run's promotions. */
async function followFiles(config: Config, show: (event: AnyCloudEvent) => void, all: boolean, stopped: Promise<void>): Promise<void> {
  const store = new FsRunStateStore(config.dataDir);
  const seen = new Set<string>();
  let first = true;
  let running = true;
  void stopped.then(() => (running = false));
  while (running) {
    const events = (await store.list())
      .flatMap((run) => [...Object.values(run.stages).flatMap((stage) => (stage?.event ? [stage.event] : [])), ...(run.promotions ?? [])])
      .filter((event) => !seen.has(event.id))
      .sort((a, b) => a.time.localeCompare(b.time));
    for (const event of events) {
      seen.add(event.id);
      if (!first || all) show(parseEvent({ specversion: '1.0', source: 'heimdall', datacontenttype: 'application/json', ...event }));
    }
    first = false;
    await Promise.race([sleep(POLL_MS), stopped]);
  }
}

const RED = '\x1b[31m';
const GREEN = '\x1b[32m';
const YELLOW = '\x1b[33m';
const DIM = '\x1b[2m';
const RESET = '\x1b[0m';

function colored(line: string, event: AnyCloudEvent, enabled: boolean): string {
  if (!enabled) return line;
  const color = tone(event);
  return `${DIM}${line.slice(0, 17)}${RESET} ${color}${line.slice(18)}${color ? RESET : ''}`;
}

/** Red for a failure, yellow for a model held back or warned about, green for an alias that moved. */
function tone(event: AnyCloudEvent): string {
  switch (event.type) {
    case 'heimdall.pipeline.failed':
      return RED;
    case 'heimdall.model.registered':
      return event.data.alias.moved && event.data.gate.checks.every((check) => check.passed) ? GREEN : YELLOW;
    case 'heimdall.model.promoted':
      return GREEN;
    default:
      return '';
  }
}
