import { stat } from 'node:fs/promises';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { startWorker } from './worker.ts';

/** The sha256 of a file, computed in a worker thread so that it runs beside the caller's own work. */
export async function sha256File(path: string, onProgress?: (doneBytes: number, totalBytes: number) => void): Promise<string> {
  const { size } = await stat(path);
  const worker = startWorker(new URL('./sha256-worker.ts', import.meta.url), { path });
  try {
    return await new Promise<string>((resolve, reject) => {
      worker.on('message', (message: { kind: 'progress'; done: number } | { kind: 'done'; sha256: string } | { kind: 'error'; message: string }) => {
        if (message.kind === 'progress') onProgress?.(message.done, size);
        else if (message.kind === 'done') resolve(message.sha256);
        else reject(new HeimdallError(ErrorCodes.IO_ERROR, `cannot hash ${path}: ${message.message}`));
      });
      worker.on('error', (error) => reject(new HeimdallError(ErrorCodes.IO_ERROR, `cannot hash ${path}: ${error.message}`, { cause: error })));
    });
  } finally {
    await worker.terminate();
  }
}
