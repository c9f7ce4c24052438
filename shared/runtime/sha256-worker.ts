// Hashes a file in a worker thread, posting progress; a second core takes the work off the exporter.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

const { path } = workerData as { path: string };
const hash = createHash('sha256');
let done = 0;
try {
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) {
    hash.update(chunk as Buffer);
    done += (chunk as Buffer).byteLength;
    parentPort!.postMessage({ kind: 'progress', done });
  }
  parentPort!.postMessage({ kind: 'done', sha256: hash.digest('hex') });
} catch (error) {
  parentPort!.postMessage({ kind: 'error', message: (error as Error).message });
}
