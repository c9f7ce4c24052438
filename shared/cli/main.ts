import { asHeimdallError, ErrorCodes } from '../errors/index.ts';
import { demoCommand, demoUsage } from './commands/demo.ts';
import { exportCommand, exportUsage } from './commands/export.ts';
import { sampleCommand, sampleUsage } from './commands/sample.ts';
import { processIO, type CommandIO } from './io.ts';

type Command = (argv: string[], io: CommandIO) => Promise<number>;

const commands: Record<string, { run: Command; usage: string; summary: string }> = {
  export: { run: exportCommand, usage: exportUsage, summary: 'convert a checkpoint to ONNX' },
  sample: { run: sampleCommand, usage: sampleUsage, summary: 'write a LocalizationNet checkpoint with random weights' },
  demo: { run: demoCommand, usage: demoUsage, summary: 'make a sample checkpoint and take it through the exporter' },
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
export async function runCli(argv: string[], io: CommandIO = processIO): Promise<number> {
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
    return await command.run(rest, io);
  } catch (error) {
    const failure = asHeimdallError(error);
    io.stderr(`error: ${failure.toLine()}`);
    return failure.code === ErrorCodes.USAGE ? 2 : 1;
  }
}
