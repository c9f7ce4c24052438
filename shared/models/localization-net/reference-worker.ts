// Loaded as CommonJS (see startWorker): no top-level await, no import.meta.
// Runs the reference forward pass on some samples in a worker thread (see reference-pass.ts).
import { parentPort, workerData } from 'node:worker_threads';
import { openCheckpoint } from '../../checkpoint/index.ts';
import { HeimdallError } from '../../errors/index.ts';
import { ReferenceModel } from './reference.ts';
import type { ReferenceJob, ReferenceMessage } from './reference-pass.ts';

const job = workerData as ReferenceJob;
const post = (message: ReferenceMessage, transfer: ArrayBuffer[] = []) => parentPort!.postMessage(message, transfer);

async function main(): Promise<void> {
  // Its own reader of the file: the weights are read on this thread, as the pass reaches them.
  const checkpoint = await openCheckpoint(job.checkpointPath);
  try {
    const model = ReferenceModel.open(checkpoint.tensors, job.spec);
    const outputs = await model.forward(job.inputs, job.samples, { onProgress: (done) => post({ kind: 'progress', doneBlocks: done }) });
    post({ kind: 'done', ...outputs }, [outputs.positions.buffer as ArrayBuffer, outputs.uncertainties.buffer as ArrayBuffer]);
  } finally {
    await checkpoint.close();
  }
}

main().catch((error: unknown) => post({ kind: 'error', message: (error as Error).message, ...(error instanceof HeimdallError ? { code: error.code } : {}) }));
