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
  if (options.commonJs) {
    const tsx = createRequire(import.meta.url).resolve('tsx/cjs/api');
    const bootstrap = `require(${JSON.stringify(tsx)}).register(); require(${JSON.stringify(fileURLToPath(module))});`;
    return new Worker(bootstrap, { eval: true, workerData });
  }
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(module.href)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`), { workerData });
}
