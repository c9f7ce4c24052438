import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { createEvent, runIdOf, type CloudEvent } from '../events/index.ts';
import { sha256File } from '../runtime/sha256.ts';
import { CHECKPOINTS_BUCKET, PARITY_SIDECAR_SUFFIX, type ObjectStore } from '../storage/object-store.ts';
import { source } from './stage.ts';

/**
 * What ingest does for a checkpoint given as a local file (`heimdall run`): hash it for the run id,
 * put it in the checkpoints bucket (with its parity sidecar when one lies beside it), and announce
 * it as MinIO would have.
 */
export async function ingestLocalFile(path: string, store: ObjectStore, onProgress: (message: string) => void): Promise<CloudEvent<'heimdall.checkpoint.created'>> {
  const info = await stat(path).catch(() => undefined);
  if (!info?.isFile()) throw new HeimdallError(ErrorCodes.CHECKPOINT_NOT_FOUND, `no such checkpoint file: ${path}`);
  onProgress(`hashing ${basename(path)}`);
  const sha256 = await sha256File(path);
  const runId = runIdOf(sha256);
  const key = `${runId}/${basename(path)}`;
  onProgress(`storing ${key}`);
  const object = await store.putFile(CHECKPOINTS_BUCKET, key, path, { sha256 }).catch((error: Error) => {
    // The store's own errors (STORAGE_AUTH, ...) say more than a generic I/O failure.
    if (error instanceof HeimdallError) throw error;
    throw new HeimdallError(ErrorCodes.IO_ERROR, `cannot store the checkpoint: ${error.message}`, { cause: error });
  });
  const sidecar = `${path}${PARITY_SIDECAR_SUFFIX}`;
  if ((await stat(sidecar).catch(() => undefined))?.isFile()) await store.putFile(CHECKPOINTS_BUCKET, `${key}${PARITY_SIDECAR_SUFFIX}`, sidecar);
  return createEvent('heimdall.checkpoint.created', {
    stage: 'ingest',
    source: source('ingest'),
    subject: key,
    data: { bucket: CHECKPOINTS_BUCKET, key, size: object.size, etag: object.etag, runId, sha256 },
  });
}

/** The run id to report when a file cannot even be hashed. */
export const UNKNOWN_RUN = 'unknown';
