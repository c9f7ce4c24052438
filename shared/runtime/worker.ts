import { Worker } from 'node:worker_threads';

/**
 * Starts a worker thread on a module of ours. Sources run as TypeScript through tsx, whose loader
 * is registered per thread, so a `.ts` worker first registers it (a tiny data: URL bootstrap);
 * a compiled `.js` worker starts directly.
 */
export function startWorker(module: URL, workerData: unknown): Worker {
  if (!module.pathname.endsWith('.ts')) return new Worker(module, { workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import { register } from ${JSON.stringify(tsx)}; register(); await import(${JSON.stringify(module.href)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(bootstrap)}`), { workerData });
}
