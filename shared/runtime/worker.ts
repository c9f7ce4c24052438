import { spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

export interface StartOptions {
  /**
   * The module uses neither top-level await nor `import.meta`: load it through tsx's CommonJS hook,
   * which runs on the worker's own thread, where the ESM loader starts a hooks thread as well
   * (~0.2 s more CPU per worker).
   */
  commonJs?: boolean;
}

/**
 * Starts a worker thread on a module of ours. Sources run as TypeScript through tsx, whose loader
 * is registered per thread, so a `.ts` worker first registers it (a tiny bootstrap);
 * a compiled `.js` worker starts directly.
 */
export function startWorker(module: URL, workerData: unknown, options: StartOptions = {}): Worker {
  if (!module.pathname.endsWith('.ts')) return new Worker(module, { workerData });
  if (options.commonJs) return new Worker(commonJsBootstrap(module), { eval: true, workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(module.href)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`), { workerData });
}

/**
 * Starts a child process on a module of ours, loaded as a `commonJs` worker is (no top-level await,
 * no `import.meta`), with an IPC channel that carries typed arrays as they are (advanced
 * serialization) and the parent's stdout and stderr. Unlike a thread, a process gives all its
 * memory back when it exits, and a native crash in it is an error here, not the end of this process.
 * `defaults` are environment variables it gets unless the parent's environment sets them.
 */
export function startChild(module: URL, defaults: Readonly<Record<string, string>> = {}): ChildProcess {
  const path = fileURLToPath(module);
  const args = path.endsWith('.ts') ? ['-e', commonJsBootstrap(module)] : [path];
  return spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced', env: { ...defaults, ...process.env } });
}

function commonJsBootstrap(module: URL): string {
  const tsx = createRequire(import.meta.url).resolve('tsx/cjs/api');
  return `require(${JSON.stringify(tsx)}).register(); require(${JSON.stringify(fileURLToPath(module))});`;
}
