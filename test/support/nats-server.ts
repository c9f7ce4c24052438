import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './services/service-process.ts';

/** A real nats-server with JetStream on a free loopback port and its own store dir (DESIGN §7). */
export interface NatsServer {
  readonly url: string;
  /** Stops the server (SIGTERM) and starts it again on the same port and store: a server restart. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export async function startNatsServer(): Promise<NatsServer> {
  const port = await freePort();
  const storeDir = await mkdtemp(join(tmpdir(), 'heimdall-nats-'));
  let child = await launch(port, storeDir);
  return {
    url: `nats://127.0.0.1:${port}`,
    async restart() {
      await terminate(child);
      child = await launch(port, storeDir);
    },
    async stop() {
      await terminate(child);
      await rm(storeDir, { recursive: true, force: true });
    },
  };
}

async function launch(port: number, storeDir: string): Promise<ChildProcess> {
  const child = spawn('nats-server', ['--jetstream', '--store_dir', storeDir, '--addr', '127.0.0.1', '--port', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nats-server did not become ready in 15 s:\n${log}`)), 15_000);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start nats-server (npm run setup installs it): ${error.message}`));
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      log += chunk.toString();
      if (log.includes('Server is ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`nats-server exited with ${code}:\n${log}`)));
  });
  return child;
}

function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}
