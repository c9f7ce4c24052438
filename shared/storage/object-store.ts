/**
 * The ObjectStore port: S3 semantics (buckets, keys, user metadata, etags) with files as the unit of
 * transfer, because checkpoints and models are too big to hold in memory.
 */
export interface ObjectInfo {
  readonly size: number;
  readonly etag: string;
  readonly metadata: Readonly<Record<string, string>>;
}

export interface ObjectStore {
  /** `s3://bucket/key` for S3, `file://...` for the filesystem store: what events carry. */
  uri(bucket: string, key: string): string;
  /** Parses a uri made by `uri()` back into bucket and key. */
  parseUri(uri: string): { bucket: string; key: string };
  stat(bucket: string, key: string): Promise<ObjectInfo | undefined>;
  /** Uploads a local file (creating the bucket when missing). */
  putFile(bucket: string, key: string, path: string, metadata?: Record<string, string>): Promise<ObjectInfo>;
  /**
   * A local path holding the object's bytes, and a release function to call when done (removes a
   * downloaded temporary copy; a no-op where the store is local). OBJECT_NOT_FOUND when missing.
   */
  fetchFile(bucket: string, key: string): Promise<{ path: string; release(): Promise<void> }>;
}

/** `fetchFile` for an object named by the uri an event carries. */
export function fetchUri(store: ObjectStore, uri: string): Promise<{ path: string; release(): Promise<void> }> {
  const { bucket, key } = store.parseUri(uri);
  return store.fetchFile(bucket, key);
}

/** Golden samples beside a checkpoint (`<key>.parity.safetensors`), read by parity (DESIGN §5). */
export const PARITY_SIDECAR_SUFFIX = '.parity.safetensors';

/** S3 bucket naming rules: 3-63 of [a-z0-9.-], starting and ending alphanumeric, no `..`. */
export function isBucketName(name: string): boolean {
  return /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(name) && !name.includes('..');
}

export const MODELS_BUCKET = 'heimdall-models';
export const CHECKPOINTS_BUCKET = 'heimdall-checkpoints';

/** DESIGN §3 storage layout: everything of one run under models/localization/<runId>/. */
export const modelKey = (runId: string) => `models/localization/${runId}/model.onnx`;
export const reportKey = (runId: string) => `models/localization/${runId}/report.json`;
