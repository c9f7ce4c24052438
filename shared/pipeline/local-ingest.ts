import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { runIdOf, type CloudEvent } from '../events/index.ts';
import { sha256File } from '../runtime/sha256.ts';
import { CHECKPOINTS_BUCKET, PARITY_SIDECAR_SUFFIX, type ObjectStore } from '../storage/object-store.ts';
import { runStartEvent } from './stage.ts';

/**
 * What ingest does for a checkpoint given as a local file (`heimdall run`): hash it for the run id,
 * put it in the checkpoints bucket (with its parity sidecar when one lies beside it), and announce
 * it as MinIO would have. The file must be a regular file (a FIFO or device would be read forever,
 * or once: NOT_A_FILE), and must not change while it is ingested, or the stored object would not be
 * the bytes its run id names. A stop (`signal`) is honoured between the steps.
 */
export async function ingestLocalFile(path: string, store: ObjectStore, onProgress: (message: string) => void, signal?: AbortSignal): Promise<CloudEvent<'heimdall.checkpoint.created'>> {
  const before = await stat(path, { bigint: true }).catch(() => undefined);
  if (!before) throw new HeimdallError(ErrorCodes.CHECKPOINT_NOT_FOUND, `no such checkpoint file: ${path}`);
  if (!before.isFile()) throw new HeimdallError(ErrorCodes.NOT_A_FILE, `${path} is not a regular file (a directory, FIFO, device or socket): a checkpoint must be one`);
  onProgress(`hashing ${basename(path)}`);
  const sha256 = await untilAborted(sha256File(path), signal);
  const runId = runIdOf(sha256);
  const key = `${runId}/${basename(path)}`;
  signal?.throwIfAborted();
  onProgress(`storing ${key}`);
  const object = await store.putFile(CHECKPOINTS_BUCKET, key, path, { sha256 }).catch((error: Error) => {
    // The store's own errors (STORAGE_AUTH, ...) say more than a generic I/O failure.
    if (error instanceof HeimdallError) throw error;
    throw new HeimdallError(ErrorCodes.IO_ERROR, `cannot store the checkpoint: ${error.message}`, { cause: error });
  });
  // Written to while we hashed or copied it (a trainer still saving): the object may hold other
  // bytes than those hashed. Retriable: once the file is complete, the same command works.
  const after = await stat(path, { bigint: true }).catch(() => undefined);
  if (!after || after.size !== before.size || after.mtimeNs !== before.mtimeNs || after.ino !== before.ino) {
    throw new HeimdallError(ErrorCodes.IO_ERROR, `${path} changed while it was being ingested (still being written?); run again once it is complete`);
  }
  signal?.throwIfAborted();
  const sidecar = `${path}${PARITY_SIDECAR_SUFFIX}`;
  if ((await stat(sidecar).catch(() => undefined))?.isFile()) await store.putFile(CHECKPOINTS_BUCKET, `${key}${PARITY_SIDECAR_SUFFIX}`, sidecar);
  return runStartEvent('heimdall.checkpoint.created', { stage: 'ingest', key, data: { bucket: CHECKPOINTS_BUCKET, key, size: object.size, etag: object.etag, runId, sha256 } });
}

/** `work`, or the signal's reason as soon as it fires (a hash in a worker thread cannot be cancelled; it is left to finish). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  work.catch(() => undefined);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** The run id to report when a file cannot even be hashed. */
export const UNKNOWN_RUN = 'unknown';
