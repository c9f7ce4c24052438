import { asHeimdallError, ErrorCodes } from '../errors/index.ts';
import { demoCommand, demoUsage } from './commands/demo.ts';
import { exportCommand, exportUsage } from './commands/export.ts';
import { functionCommand, functionUsage } from './commands/function.ts';
import { sampleCommand, sampleUsage } from './commands/sample.ts';
import { runCommand, runUsage } from './commands/run.ts';
import { processIO, type CommandIO } from './io.ts';
import { promoteCommand, promoteUsage, rollbackCommand, rollbackUsage } from './commands/promote.ts';
import { reconcileCommand, reconcileUsage } from './commands/reconcile.ts';
import type { AnyStage, IngestFunction } from '../pipeline/stage.ts';
import { serveCommand, serveUsage } from './commands/serve.ts';
import { statusCommand, statusUsage } from './commands/status.ts';
import { versionsCommand, versionsUsage } from './commands/versions.ts';
import { watchCommand, watchUsage } from './commands/watch.ts';
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

const commands: Record<string, { run: Command; usage: string; summary: string }> = {
  run: { run: (argv, env) => runCommand(argv, env.io, env.stages, env.subscribers), usage: runUsage, summary: 'take a checkpoint through export, validate, parity, benchmark and register' },
  export: { run: (argv, env) => exportCommand(argv, env.io), usage: exportUsage, summary: 'convert a checkpoint to ONNX' },
  sample: { run: (argv, env) => sampleCommand(argv, env.io), usage: sampleUsage, summary: 'write a LocalizationNet checkpoint with random weights' },
  serve: { run: serveCommand, usage: serveUsage, summary: 'run stages as workers on NATS (NATS_URL)' },
  status: { run: statusCommand, usage: statusUsage, summary: 'list runs, or show one run stage by stage' },
  versions: { run: versionsCommand, usage: versionsUsage, summary: 'list model versions with aliases, gate verdicts and alias history' },
  promote: { run: promoteCommand, usage: promoteUsage, summary: 'point an alias at a version by hand (publishes model.promoted on NATS when configured)' },
  rollback: { run: rollbackCommand, usage: rollbackUsage, summary: 'return an alias to the version that held it before (publishes model.promoted)' },
  watch: { run: watchCommand, usage: watchUsage, summary: 'tail pipeline events live' },
  reconcile: { run: reconcileCommand, usage: reconcileUsage, summary: 'start runs for checkpoints in the bucket whose notification never came' },
  demo: { run: (argv, env) => demoCommand(argv, env), usage: demoUsage, summary: 'make a sample checkpoint and run the pipeline on it' },
  function: { run: functionCommand, usage: functionUsage, summary: 'serve one stage as an HTTP CloudEvent function on $PORT (default 8080): what a Knative container runs' },
};

export function helpText(): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length));
  return [
    'heimdall — LocalizationNet checkpoints to verified ONNX models',
    '',
    ...Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}\n  ${' '.repeat(width)}  ${c.usage}`),
  ].join('\n');
}

/** Runs one CLI invocation; returns the exit code (0 ok, 1 failed, 2 usage). */
export async function runCli(argv: string[], env: Partial<CliEnvironment> = {}): Promise<number> {
  const io = env.io ?? processIO;
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    io.stdout(helpText());
    return name ? 0 : 2;
  }
  const command = commands[name];
  if (!command) {
    io.stderr(`error: ${ErrorCodes.USAGE}: unknown command ${name}\n${helpText()}`);
    return 2;
  }
  try {
    return await command.run(rest, { io, stages: env.stages ?? [], subscribers: env.subscribers ?? [], ingest: env.ingest ?? missingIngest });
  } catch (error) {
    const failure = asHeimdallError(error);
    io.stderr(`error: ${failure.toLine()}`);
    return failure.code === ErrorCodes.USAGE ? 2 : 1;
  }
}

const missingIngest: IngestFunction = () => Promise.reject(new Error('no ingest function wired in'));
