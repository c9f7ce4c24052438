/**
 * A test service as a child process: started in its own process group (MLflow forks a uvicorn
 * worker), its output kept in a log file for error messages, ready when a probe says so, stopped
 * with the whole group, also when the test process exits without stopping it.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ServiceProcess {
  readonly pid: number;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

const running = new Set<number>();
process.once('exit', () => {
  for (const pid of running) killGroup(pid, 'SIGKILL');
});

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

/**
 * Starts `command` and resolves once `ready()` is true; rejects with the log's tail when the
 * process exits first or `timeoutMs` passes.
 */
export async function startService(
  name: string,
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; logFile: string; ready: () => Promise<boolean>; timeoutMs: number },
): Promise<ServiceProcess> {
  const log = createWriteStream(options.logFile);
  const child = spawn(command, args, { env: options.env ?? process.env, ...(options.cwd ? { cwd: options.cwd } : {}), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  const exited = new Promise<string>((resolve) => {
    child.once('error', (error) => resolve(`cannot start ${command}: ${error.message}`));
    child.once('exit', (code, signal) => resolve(`${name} exited (${code ?? signal})`));
  });
  let gone: string | undefined;
  void exited.then((why) => (gone = why));
  const stop = async () => {
    if (child.pid === undefined || !running.delete(child.pid)) return;
    killGroup(child.pid, 'SIGTERM');
    const killed = await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]);
    if (!killed) killGroup(child.pid, 'SIGKILL');
    await exited;
  };
  if (child.pid !== undefined) running.add(child.pid);
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    if (gone) break;
    if (await options.ready().catch(() => false)) return { pid: child.pid!, stop };
    if (Date.now() > deadline) {
      gone = `${name} not ready after ${options.timeoutMs / 1000} s`;
      break;
    }
    await sleep(250);
  }
  await stop();
  const tail = (await readFile(options.logFile, 'utf8').catch(() => '')).slice(-4000);
  throw new Error(`${gone}; its log (${options.logFile}):\n${tail}`);
}

/** True when `url` answers 200. */
export async function answers(url: string): Promise<boolean> {
  const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
  await response.body?.cancel();
  return response.status === 200;
}
