import { createHash } from 'node:crypto';
import { z } from 'zod';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { isBucketName, PARITY_SIDECAR_SUFFIX } from '../storage/object-store.ts';

/**
 * MinIO bucket notifications (DESIGN §3; the S3 event message structure,
 * https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html, which
 * MinIO publishes as `{EventName, Key, Records}`). Only the fields we use are required.
 */
const Notification = z.object({
  Records: z
    .array(
      z.object({
        eventName: z.string(),
        s3: z.object({
          bucket: z.object({ name: z.string().refine(isBucketName, 'not a valid bucket name') }),
          object: z.object({ key: z.string().min(1), size: z.number().int().nonnegative().default(0), eTag: z.string().default(''), versionId: z.string().optional() }),
        }),
      }),
    )
    .min(1),
});

export interface ObjectRecord {
  readonly eventName: string;
  readonly bucket: string;
  readonly key: string;
  readonly size: number;
  readonly etag: string;
  readonly versionId?: string;
}

export const CHECKPOINT_SUFFIXES = ['.pt', '.pth', '.ckpt', '.safetensors'] as const;
export const MODEL_SUFFIX = '.onnx';

export type ObjectKind = 'checkpoint' | 'model' | 'ignored';

export function kindOf(key: string): ObjectKind {
  const lower = key.toLowerCase();
  // Golden samples beside a checkpoint are read by parity, never a run of their own.
  if (lower.endsWith(PARITY_SIDECAR_SUFFIX)) return 'ignored';
  if (lower.endsWith(MODEL_SUFFIX)) return 'model';
  return CHECKPOINT_SUFFIXES.some((suffix) => lower.endsWith(suffix)) ? 'checkpoint' : 'ignored';
}

/**
 * The object records of a notification, keys URL-decoded (they arrive query-escaped); callers keep
 * the creations (`isObjectCreated`) and log the rest. INVALID_EVENT for what is not a notification.
 */
export function parseNotification(body: string): ObjectRecord[] {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new HeimdallError(ErrorCodes.INVALID_EVENT, 'notification is not JSON');
  }
  const parsed = Notification.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new HeimdallError(ErrorCodes.INVALID_EVENT, `not a bucket notification: ${issues}`);
  }
  return parsed.data.Records.map((r) => ({
    eventName: r.eventName,
    bucket: r.s3.bucket.name,
    key: decodeKey(r.s3.object.key),
    size: r.s3.object.size,
    etag: r.s3.object.eTag.replace(/^"|"$/g, ''),
    ...(r.s3.object.versionId ? { versionId: r.s3.object.versionId } : {}),
  }));
}

/** `+` is a space in query escaping; decodeURIComponent alone would keep it. */
function decodeKey(key: string): string {
  try {
    return decodeURIComponent(key.replace(/\+/g, ' '));
  } catch {
    throw new HeimdallError(ErrorCodes.INVALID_EVENT, `object key ${key} is not URL-escaped`);
  }
}

/** Every `s3:ObjectCreated:*` counts (large uploads arrive as CompleteMultipartUpload). */
export function isObjectCreated(record: ObjectRecord): boolean {
  return record.eventName.startsWith('s3:ObjectCreated:');
}

/**
 * The identity of one upload: bucket, key, etag, and the version id where the bucket keeps
 * versions. A re-fired notification (tagging, MinIO replaying its queue after an outage) has the
 * same identity; a new upload to the same key has a new etag and, in a versioned bucket, a new
 * version id. Two versions can share an etag only by holding the same bytes (an etag is the MD5 of
 * the content, or of its parts' MD5s): announcing the second one starts the same run id again,
 * which every stage is idempotent for (event ids JetStream deduplicates, content-addressed keys, the
 * registry keyed by sha256). So keying on the version costs at most a second pass over the same
 * bytes, and each version's mark is its own. Without a version id the identity is what it was.
 */
export function uploadId(object: Pick<ObjectRecord, 'bucket' | 'key' | 'etag' | 'versionId'>): string {
  const identity = `${object.bucket}\0${object.key}\0${object.etag}${object.versionId ? `\0${object.versionId}` : ''}`;
  return createHash('sha256').update(identity).digest('hex').slice(0, 32);
}
