import { asHeimdallError, ErrorCodes } from '../errors/index.ts';
import { processIO, type CommandIO } from './io.ts';
import type { AnyStage, IngestFunction } from '../pipeline/stage.ts';
import type { SubscriberFunction } from '../pipeline/subscriber.ts';

/** What the entry point provides: where output goes, and the stage functions (functions/ is wired in by bin/). */
export interface CliEnvironment {
  readonly io: CommandIO;
  readonly stages: readonly AnyStage[];
  /** Functions that listen to the events a run publishes (alerts). */
  readonly subscribers: readonly SubscriberFunction[];
  /** The pipeline's source (serve's ingest worker). */
  readonly ingest: IngestFunction;
}

type Command = (argv: string[], env: CliEnvironment) => Promise<number>;
type LoadedCommand = { readonly run: Command; readonly usage: string };

const lazy = <M>(load: () => Promise<M>, pick: (module: M) => LoadedCommand) => () => load().then(pick);

/**
 * Each command's module is loaded when that command runs: `heimdall run` then starts without the
 * NATS client, the HTTP server, the dashboard and the metrics that only other commands use (with
 * tsx each module costs start-up time). Help loads them all, for their usage lines.
 */
const commands: Record<string, { load: () => Promise<LoadedCommand>; summary: string }> = {
  run: { load: lazy(() => import('./commands/run.ts'), (m) => ({ run: (argv, env) => m.runCommand(argv, env.io, env.stages, env.subscribers), usage: m.runUsage })), summary: 'take a checkpoint through export, validate, parity, benchmark and register' },
  export: { load: lazy(() => import('./commands/export.ts'), (m) => ({ run: (argv, env) => m.exportCommand(argv, env.io), usage: m.exportUsage })), summary: 'convert a checkpoint to ONNX' },
  sample: { load: lazy(() => import('./commands/sample.ts'), (m) => ({ run: (argv, env) => m.sampleCommand(argv, env.io), usage: m.sampleUsage })), summary: 'write a LocalizationNet checkpoint with random weights' },
  serve: { load: lazy(() => import('./commands/serve.ts'), (m) => ({ run: m.serveCommand, usage: m.serveUsage })), summary: 'run stages as workers on NATS (NATS_URL)' },
  status: { load: lazy(() => import('./commands/status.ts'), (m) => ({ run: m.statusCommand, usage: m.statusUsage })), summary: 'list runs, or show one run stage by stage' },
  versions: { load: lazy(() => import('./commands/versions.ts'), (m) => ({ run: m.versionsCommand, usage: m.versionsUsage })), summary: 'list model versions with aliases, gate verdicts and alias history' },
  promote: { load: lazy(() => import('./commands/promote.ts'), (m) => ({ run: m.promoteCommand, usage: m.promoteUsage })), summary: 'point an alias at a version by hand (publishes model.promoted on NATS when configured)' },
  rollback: { load: lazy(() => import('./commands/promote.ts'), (m) => ({ run: m.rollbackCommand, usage: m.rollbackUsage })), summary: 'return an alias to the version that held it before (publishes model.promoted)' },
  watch: { load: lazy(() => import('./commands/watch.ts'), (m) => ({ run: m.watchCommand, usage: m.watchUsage })), summary: 'tail pipeline events live' },
  reconcile: { load: lazy(() => import('./commands/reconcile.ts'), (m) => ({ run: m.reconcileCommand, usage: m.reconcileUsage })), summary: 'start runs for checkpoints in the bucket whose notification never came' },
  demo: { load: lazy(() => import('./commands/demo.ts'), (m) => ({ run: (argv, env) => m.demoCommand(argv, env), usage: m.demoUsage })), summary: 'make a sample checkpoint and run the pipeline on it' },
  function: { load: lazy(() => import('./commands/function.ts'), (m) => ({ run: m.functionCommand, usage: m.functionUsage })), summary: 'serve one stage as an HTTP CloudEvent function on $PORT (default 8080): what a Knative container runs' },
};

export async function helpText(): Promise<string> {
  const width = Math.max(...Object.keys(commands).map((c) => c.length));
  const usages = await Promise.all(Object.values(commands).map(async (c) => (await c.load()).usage));
  return [
    'heimdall — LocalizationNet checkpoints to verified ONNX models',
    '',
    ...Object.entries(commands).map(([name, c], i) => `  ${name.padEnd(width)}  ${c.summary}\n  ${' '.repeat(width)}  ${usages[i]}`),
  ].join('\n');
}

/** Runs one CLI invocation; returns the exit code (0 ok, 1 failed, 2 usage). */
export async function runCli(argv: string[], env: Partial<CliEnvironment> = {}): Promise<number> {
  const io = env.io ?? processIO;
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    io.stdout(await helpText());
    return name ? 0 : 2;
  }
  const command = commands[name];
  if (!command) {
    io.stderr(`error: ${ErrorCodes.USAGE}: unknown command ${name}\n${await helpText()}`);
    return 2;
  }
  try {
    return await (await command.load()).run(rest, { io, stages: env.stages ?? [], subscribers: env.subscribers ?? [], ingest: env.ingest ?? missingIngest });
  } catch (error) {
    const failure = asHeimdallError(error);
    io.stderr(`error: ${failure.toLine()}`);
    return failure.code === ErrorCodes.USAGE ? 2 : 1;
  }
}

const missingIngest: IngestFunction = () => Promise.reject(new Error('no ingest function wired in'));
