import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { RunReport } from '../../shared/pipeline/report.ts';

const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');
/** The shortest benchmark (a 1 ms budget: the fewest timed runs that give a p50 interval): tests check behaviour, `npm run bench:pipeline` measures. */
const QUICK = { HEIMDALL_BENCHMARK_BUDGET_MS: '1', HEIMDALL_BENCHMARK_MIN_RUNS: '3', HEIMDALL_BENCHMARK_WARMUP: '1' };

/** `heimdall run <checkpoint> --workdir <workdir> --json` as a user runs it: the real CLI in its own process. */
export async function heimdallRun(checkpoint: string, workdir: string, env: Record<string, string> = {}) {
  const result = await promisify(execFile)(process.execPath, [heimdall, 'run', checkpoint, '--workdir', workdir, '--json'], {
    env: { ...process.env, ...QUICK, ...env },
    maxBuffer: 64 << 20,
  }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => e,
  );
  const lines = result.stdout.trim().split('\n');
  const last = lines.at(-1) ?? '';
  return { code: result.code, stdout: lines, stderr: result.stderr, report: (last.startsWith('{') ? JSON.parse(last) : undefined) as RunReport };
}

/** A `heimdall` command running in its own process, for tests that stop it (signals) midway. */
export interface HeimdallProcess {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** The exit: a status, or the signal that ended it. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

/** Starts `heimdall <argv...>` as a user runs it (the real CLI, its own process and environment). */
export function spawnHeimdall(argv: readonly string[], env: Record<string, string> = {}): HeimdallProcess {
  const child = spawn(process.execPath, [heimdall, ...argv], { env: { ...process.env, ...QUICK, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, at: Date.now() })));
  return { child, stdout: () => stdout, stderr: () => stderr, exited };
}

/**
 * Whether a process ended as a program stopped by `signal` does: with status 128 + n (SIGINT 130,
 * SIGTERM 143) or killed by the signal itself, which a shell reports as the same status.
 */
export function endedBy(exit: { code: number | null; signal: NodeJS.Signals | null }, signal: 'SIGINT' | 'SIGTERM'): boolean {
  const status = signal === 'SIGINT' ? 130 : 143;
  return exit.code === status || exit.signal === signal;
}

/** `heimdall <argv...>` in its own process, as a user runs it: exit status and output lines. */
export async function heimdallCommand(argv: readonly string[], env: Record<string, string> = {}) {
  const result = await promisify(execFile)(process.execPath, [heimdall, ...argv], { env: { ...process.env, ...env }, maxBuffer: 64 << 20 }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => e,
  );
  const lines = (text: string) => text.split('\n').filter((l) => l !== '');
  return { code: result.code, stdout: lines(result.stdout), stderr: lines(result.stderr) };
}
