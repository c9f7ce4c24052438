import { rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { externalDataName } from '../onnx/model.ts';

/**
 * The ObjectStore port: S3 semantics (buckets, keys, user metadata, etags) with files as the unit of
 * transfer, because checkpoints and models are too big to hold in memory.
 */
export interface ObjectInfo {
  readonly size: number;
  readonly etag: string;
  readonly metadata: Readonly<Record<string, string>>;
}

/** One version of an object, as a bucket notification names it. */
export interface ObjectVersion {
  readonly versionId?: string;
  readonly etag?: string;
}

/** An object as a listing names it: the current version of a key. */
export interface ListedObject {
  readonly key: string;
  readonly size: number;
  /** Bare (unquoted), as notifications give it. */
  readonly etag: string;
  readonly lastModified: Date;
  /** Where the bucket keeps versions: the current one's id, as its notification named it. */
  readonly versionId?: string;
}

/** A local path holding an object's bytes (fetchFile). */
export interface FetchedObject {
  readonly path: string;
  /**
   * The sha256 of these bytes where the store vouches for it: computed as they were downloaded, or
   * by the embedded store when it stored them itself (putFileByDigest) while the file is as it left
   * it. Absent where it does not know: a caller that must know hashes the file.
   */
  readonly sha256?: string;
  /**
   * Where `path` is the store's own file (the embedded store): whether it is still the file it was
   * when fetched (its inode, size, mtime and ctime: nothing wrote to it, nor changed its attributes),
   * for a reader to ask once it has read it. Absent where `path` is the caller's own download, which
   * no one else writes.
   */
  readonly unchanged?: () => Promise<boolean>;
  /** Removes a downloaded temporary copy; a no-op where the store is local. */
  release(): Promise<void>;
}

export interface PutOptions {
  /**
   * The file is the caller's own scratch file, given up: the store may take it (a rename, where
   * it lies on the store's filesystem) instead of copying it. The path may be gone afterwards.
   */
  readonly move?: boolean;
}

export interface ObjectStore {
  /** `s3://bucket/key` for S3, `file://...` for the filesystem store: what events carry. */
  uri(bucket: string, key: string): string;
  /** Parses a uri made by `uri()` back into bucket and key. */
  parseUri(uri: string): { bucket: string; key: string };
  stat(bucket: string, key: string): Promise<ObjectInfo | undefined>;
  /** Uploads a local file (creating the bucket when missing). */
  putFile(bucket: string, key: string, path: string, metadata?: Record<string, string>, options?: PutOptions): Promise<ObjectInfo>;
  /**
   * Stores a file under a key named by its content (ingest's `<runId>/<name>`), hashing it while it
   * is stored, with its sha256 in the metadata; a stop (`signal`) once it is hashed stores nothing.
   * Only where a store can do both at once (the embedded one): elsewhere the caller hashes, then puts.
   */
  putFileByDigest?(bucket: string, path: string, keyOf: (sha256: string) => string, options?: { metadata?: Record<string, string>; signal?: AbortSignal }): Promise<{ key: string; sha256: string; object: ObjectInfo }>;
  /**
   * The object's bytes as a local file, to release when done. OBJECT_NOT_FOUND when missing.
   * `version` pins what a notification named: that version id (where the store keeps versions), and
   * an etag the object must still have (OBJECT_NOT_FOUND naming both when it no longer does).
   */
  fetchFile(bucket: string, key: string, version?: ObjectVersion): Promise<FetchedObject>;
  /**
   * The objects whose keys start with `prefix`, in key order (UTF-8 bytes, as S3 lists them), read
   * page by page as the caller iterates (stop early and no further page is asked for).
   * OBJECT_NOT_FOUND when the bucket does not exist.
   */
  list(bucket: string, prefix?: string): AsyncIterable<ListedObject>;
}

/**
 * The bucket and key of the object a uri from an event names, or INVALID_EVENT: the uri must be of
 * this store's form (`store.uri()`'s scheme: `s3://bucket/key` on S3, `file:///...` on the embedded
 * store) and its parser must accept it. An event is content: whatever is wrong with its uri (another
 * store's scheme, `http://`, a relative path, an empty string) is never retriable, and no parser's
 * TypeError reaches the runner as an I/O failure.
 */
export function locateUri(store: ObjectStore, uri: string): { bucket: string; key: string } {
  const expected = schemeOf(store.uri(MODELS_BUCKET, 'k'));
  const scheme = schemeOf(uri);
  if (scheme !== expected) {
    throw new HeimdallError(ErrorCodes.INVALID_EVENT, `the event names ${JSON.stringify(uri)}, not an object of this store (${expected}// uris)`);
  }
  try {
    return store.parseUri(uri);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new HeimdallError(ErrorCodes.INVALID_EVENT, `the event names ${JSON.stringify(uri)}, which this store cannot read: ${reason}`, { cause: error });
  }
}

/** `fetchFile` for an object named by the uri an event carries (INVALID_EVENT when it names none of this store: `locateUri`). */
export async function fetchUri(store: ObjectStore, uri: string, version?: ObjectVersion): Promise<FetchedObject> {
  const { bucket, key } = locateUri(store, uri);
  return store.fetchFile(bucket, key, version);
}

/** A model fetched for a stage: the ONNX file and, where one is stored beside it, its external data file in the same folder. */
export interface FetchedModel {
  readonly path: string;
  /** The external data file: its path (`<path>.data`, where onnxruntime looks), size and the sha256 the store keeps for it. */
  readonly externalData?: { readonly path: string; readonly bytes: number; readonly sha256?: string };
  release(): Promise<void>;
}

/**
 * `fetchUri` for a model: the ONNX file and, when the store holds `<key>.data` beside it (the
 * pipeline stores its models with external data: shared/onnx/writer.ts), that file too, under the
 * name the model refers to it by, in the model's folder (onnxruntime and onnx resolve `location`
 * relative to it). The embedded store's files are beside each other already; a downloaded one is
 * moved beside the model (both temporaries of one store, one filesystem). Whether the model names
 * that file, within its bounds and with its digest, is validate's check (externalDataProblems).
 * `version` pins the model file (fetchFile); the data file is the one its key holds.
 */
export async function fetchModel(store: ObjectStore, uri: string, version?: ObjectVersion): Promise<FetchedModel> {
  const { bucket, key } = locateUri(store, uri);
  const model = await store.fetchFile(bucket, key, version);
  try {
    const dataKey = externalDataName(key);
    const info = await store.stat(bucket, dataKey);
    if (!info) return model;
    const data = await store.fetchFile(bucket, dataKey);
    const beside = join(dirname(model.path), basename(dataKey));
    try {
      if (data.path !== beside) await rename(data.path, beside);
    } catch (error) {
      await data.release();
      throw error;
    }
    return {
      path: model.path,
      externalData: { path: beside, bytes: info.size, ...(info.metadata['sha256'] ? { sha256: info.metadata['sha256'] } : {}) },
      release: async () => {
        await data.release();
        await model.release();
      },
    };
  } catch (error) {
    await model.release();
    throw error;
  }
}

/** `s3:`, `file:`: the scheme a uri starts with (RFC 3986 §3.1), lowercased; '' when it has none. */
function schemeOf(uri: string): string {
  return /^([a-z][a-z0-9+.-]*):/i.exec(uri)?.[1]?.toLowerCase().concat(':') ?? '';
}

/** Golden samples beside a checkpoint (`<key>.parity.safetensors`), read by parity (DESIGN §5). */
export const PARITY_SIDECAR_SUFFIX = '.parity.safetensors';

/** S3 bucket naming rules: 3-63 of [a-z0-9.-], starting and ending alphanumeric, no `..`. */
export function isBucketName(name: string): boolean {
  return /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(name) && !name.includes('..');
}

export const MODELS_BUCKET = 'heimdall-models';
export const CHECKPOINTS_BUCKET = 'heimdall-checkpoints';

/** DESIGN §3 storage layout: everything of one run under models/localization/<runId>/; a variant's model beside the fp32 one (`model.int8.onnx`). */
export const modelKey = (runId: string, variant?: string) => `models/localization/${runId}/${variant ? `model.${variant}.onnx` : 'model.onnx'}`;
export const reportKey = (runId: string) => `models/localization/${runId}/report.json`;
