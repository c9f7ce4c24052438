import { availableParallelism } from 'node:os';
import { ErrorCodes, HeimdallError, type ErrorCode } from '../../errors/index.ts';
import { startWorker } from '../../runtime/worker.ts';
import { OUTPUT_WIDTH, type LocalizationNetSpec } from './architecture.ts';
import { ReferenceModel, type ReferenceOutputs } from './reference.ts';

/** What one worker computes: the forward pass of `samples` inputs on the checkpoint's weights. */
export interface ReferenceJob {
  readonly checkpointPath: string;
  readonly spec: LocalizationNetSpec;
  readonly inputs: Float32Array;
  readonly samples: number;
}

export type ReferenceMessage =
  | { kind: 'progress'; doneBlocks: number }
  | ({ kind: 'done' } & ReferenceOutputs)
  | { kind: 'error'; message: string; code?: ErrorCode };

export interface ReferencePassOptions {
  /** Worker threads at most (one per core by default); never more than there are samples. */
  readonly threads?: number;
  /** The share of the pass done, 0..1, as blocks finish. */
  readonly onProgress?: (fraction: number) => void;
  /** Stops the workers; the pass rejects with the signal's reason. */
  readonly signal?: AbortSignal;
}

/**
 * The reference forward pass (reference.ts) of `samples` inputs on the checkpoint at `checkpointPath`,
 * off the event loop: the samples are split between worker threads, each reading the weights itself
 * as its pass reaches them (memory per thread stays near the largest layer's weights). A sample's
 * outputs do not depend on which thread ran it, nor on the others beside it.
 */
export function referencePass(checkpointPath: string, spec: LocalizationNetSpec, inputs: Float32Array, samples: number, options: ReferencePassOptions = {}): Promise<ReferenceOutputs> {
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(signal.reason);
  const threads = Math.max(1, Math.min(samples, options.threads ?? availableParallelism()));
  const totalBlocks = spec.depths.reduce((a, b) => a + b, 0) * threads;
  const size = ReferenceModel.sampleSize;
  const shares = Array.from({ length: threads }, (_, i) => {
    const start = Math.floor((i * samples) / threads);
    return { start, samples: Math.floor(((i + 1) * samples) / threads) - start };
  });
  const outputs = { positions: new Float32Array(samples * OUTPUT_WIDTH), uncertainties: new Float32Array(samples * OUTPUT_WIDTH) };
  const doneBlocks = shares.map(() => 0);
  const delivered = shares.map(() => false);

  return new Promise((resolve, reject) => {
    const workers = shares.map(({ start, samples: count }) => {
      const job: ReferenceJob = { checkpointPath, spec, inputs: inputs.slice(start * size, (start + count) * size), samples: count };
      return startWorker(new URL('./reference-worker.ts', import.meta.url), job, { commonJs: true });
    });
    let settled = false;
    const settle = (error?: unknown) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', abort);
      for (const worker of workers) void worker.terminate();
      if (error === undefined) resolve(outputs);
      else reject(error);
    };
    const abort = () => settle(signal!.reason);
    signal?.addEventListener('abort', abort, { once: true });
    workers.forEach((worker, i) => {
      worker.on('message', (message: ReferenceMessage) => {
        if (message.kind === 'progress') {
          doneBlocks[i] = message.doneBlocks;
          options.onProgress?.(doneBlocks.reduce((a, b) => a + b, 0) / totalBlocks);
        } else if (message.kind === 'done') {
          outputs.positions.set(message.positions, shares[i]!.start * OUTPUT_WIDTH);
          outputs.uncertainties.set(message.uncertainties, shares[i]!.start * OUTPUT_WIDTH);
          delivered[i] = true;
          if (delivered.every(Boolean)) settle();
        } else {
          // The checkpoint's own faults keep their codes (INVALID_STATE_DICT, CHECKPOINT_CORRUPT, ...).
          settle(new HeimdallError(message.code ?? ErrorCodes.IO_ERROR, message.message));
        }
      });
      worker.on('error', (error) => settle(new HeimdallError(ErrorCodes.IO_ERROR, `reference forward pass failed: ${error.message}`, { cause: error })));
      worker.on('exit', (code) => {
        if (!delivered[i]) settle(new HeimdallError(ErrorCodes.IO_ERROR, `a reference forward pass thread exited with code ${code} (out of memory?)`));
      });
    });
  });
}
