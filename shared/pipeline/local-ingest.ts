import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { runIdOf, type CloudEvent } from '../events/index.ts';
import { sha256File } from '../runtime/sha256.ts';
import { CHECKPOINTS_BUCKET, PARITY_SIDECAR_SUFFIX, type ObjectInfo, type ObjectStore } from '../storage/object-store.ts';
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
  const keyOf = (sha256: string) => `${runIdOf(sha256)}/${basename(path)}`;
  const byDigest = store.putFileByDigest?.bind(store);
  const stored = await (byDigest ? hashWhileStoring(path, byDigest, keyOf, onProgress, signal) : hashThenStore(path, store, keyOf, onProgress, signal)).catch((error: Error) => {
    // The store's own errors (STORAGE_AUTH, ...) say more than a generic I/O failure.
    if (error instanceof HeimdallError || signal?.aborted) throw error;
    throw new HeimdallError(ErrorCodes.IO_ERROR, `cannot store the checkpoint: ${error.message}`, { cause: error });
  });
  const { key, sha256, object } = stored;
  const runId = runIdOf(sha256);
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

/**
 * A store that can copies the file in while it is hashed (a checkpoint of gigabytes: the copy no
 * longer waits for the digest that names its key); the stop is honoured once it is hashed.
 */
function hashWhileStoring(path: string, putFileByDigest: NonNullable<ObjectStore['putFileByDigest']>, keyOf: (sha256: string) => string, onProgress: (message: string) => void, signal?: AbortSignal): Promise<Stored> {
  onProgress(`hashing and storing ${basename(path)}`);
  return untilAborted(putFileByDigest(CHECKPOINTS_BUCKET, path, keyOf, signal ? { signal } : {}), signal);
}

/** A service's store needs the key before the upload: the file is hashed first, then stored. */
async function hashThenStore(path: string, store: ObjectStore, keyOf: (sha256: string) => string, onProgress: (message: string) => void, signal?: AbortSignal): Promise<Stored> {
  onProgress(`hashing ${basename(path)}`);
  const sha256 = await untilAborted(sha256File(path), signal);
  const key = keyOf(sha256);
  signal?.throwIfAborted();
  onProgress(`storing ${key}`);
  return { key, sha256, object: await store.putFile(CHECKPOINTS_BUCKET, key, path, { sha256 }) };
}

interface Stored {
  readonly key: string;
  readonly sha256: string;
  readonly object: ObjectInfo;
}

/** `work`, or the signal's reason as soon as it fires (a hash in a worker thread cannot be cancelled; it is left to finish, and stores nothing). */
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
