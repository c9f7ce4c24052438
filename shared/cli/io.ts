/** Where a command writes: the process streams in the CLI, buffers in tests. */
export interface CommandIO {
  stdout(line: string): void;
  stderr(line: string): void;
}

export const processIO: CommandIO = {
  stdout: (line) => process.stdout.write(`${line}\n`),
  stderr: (line) => process.stderr.write(`${line}\n`),
};
