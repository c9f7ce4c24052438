import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { IncomingHttpHeaders } from 'node:http';
import { Client, InvalidBucketNameError, InvalidObjectNameError, S3Error } from 'minio';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { DEFAULT_RETRY, isNetworkError, withRetry, type RetryPolicy } from '../errors/retry.ts';
import type { ObjectInfo, ObjectStore, ObjectVersion } from './object-store.ts';

export interface S3Options {
  /** `http(s)://host:port` of an S3-protocol server (MinIO, AWS, ...). */
  readonly endpoint: string;
  readonly accessKey: string;
  readonly secretKey: string;
  readonly region: string;
  /**
   * Files larger than this go up as multipart uploads in parts of this size (at least 5 MiB, S3's
   * minimum). One part is held in memory at a time; the minio client's default is 64 MiB.
   */
  readonly partSize?: number;
  readonly retry?: RetryPolicy;
  /** Where downloads are written (default: the OS temp dir). */
  readonly tempDir?: string;
}

/** A downloaded object: its bytes in a temporary file, and the sha256 computed while they arrived. */
export interface FetchedObject {
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
  release(): Promise<void>;
}

/** S3 error codes of a server that is overloaded or failing for now (the rest are answers, not accidents). */
const TRANSIENT_CODES = new Set(['SlowDown', 'InternalError', 'ServiceUnavailable', 'RequestTimeout', 'RequestTimeTooSkewed', 'OperationAborted', 'XMinioServerNotInitialized']);
const AUTH_CODES = new Set(['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken', 'AuthorizationHeaderMalformed']);
const NOT_FOUND_CODES = new Set(['NoSuchKey', 'NoSuchBucket', 'NoSuchVersion', 'NotFound']);

/**
 * The ObjectStore on an S3-protocol server through the `minio` client (DESIGN §2). Uris are
 * `s3://bucket/key`. Downloads stream to a temporary file, hashed on the way (checkpoints can be
 * several GB); uploads stream from the file, multipart above `partSize`. Transient failures
 * (connection errors, 5xx, SlowDown) are retried with backoff; 4xx answers are not.
 */
export class S3ObjectStore implements ObjectStore {
  private readonly client: Client;
  private readonly retry: RetryPolicy;
  private readonly tempDir: string;
  private readonly readyBuckets = new Set<string>();

  constructor(private readonly options: S3Options) {
    const url = new URL(options.endpoint);
    this.client = new Client({
      endPoint: url.hostname,
      port: url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80,
      useSSL: url.protocol === 'https:',
      accessKey: options.accessKey,
      secretKey: options.secretKey,
      region: options.region,
      // MinIO and most self-hosted servers address buckets by path, not by DNS name.
      pathStyle: true,
      ...(options.partSize ? { partSize: options.partSize } : {}),
      // Ours instead: the client's own retry re-sends only single requests and warns on the console.
      retryOptions: { disableRetry: true },
    });
    this.retry = options.retry ?? DEFAULT_RETRY;
    this.tempDir = options.tempDir ?? tmpdir();
  }

  uri(bucket: string, key: string): string {
    return `s3://${bucket}/${key}`;
  }

  parseUri(uri: string): { bucket: string; key: string } {
    const match = /^s3:\/\/([^/]+)\/(.+)$/.exec(uri);
    if (!match) throw new HeimdallError(ErrorCodes.INVALID_EVENT, `${JSON.stringify(uri)} is not an s3://bucket/key uri`);
    return { bucket: match[1]!, key: match[2]! };
  }

  async stat(bucket: string, key: string): Promise<ObjectInfo | undefined> {
    try {
      const info = await this.call(`stat s3://${bucket}/${key}`, () => this.client.statObject(bucket, key));
      return { size: info.size, etag: info.etag, metadata: userMetadata(info.metaData) };
    } catch (error) {
      if (error instanceof HeimdallError && error.code === ErrorCodes.OBJECT_NOT_FOUND) return undefined;
      throw error;
    }
  }

  async putFile(bucket: string, key: string, path: string, metadata: Record<string, string> = {}): Promise<ObjectInfo> {
    await this.ensureBucket(bucket);
    const { size } = await stat(path);
    const headers = Object.fromEntries(Object.entries(metadata).map(([k, v]) => [`x-amz-meta-${k}`, encodeHeaderValue(v)]));
    const { etag } = await this.call(`upload to s3://${bucket}/${key}`, () => this.client.fPutObject(bucket, key, path, headers));
    return { size, etag, metadata: { ...metadata } };
  }

  /**
   * Downloads to a temporary file, hashing on the way; a retry starts over. One GET: the size, etag
   * and metadata checked are those of the bytes received, so an object replaced meanwhile cannot
   * mix with the one asked for. `version` pins what a notification named: `versionId` is sent with
   * the request (a versioned bucket keeps the older bytes), and the object's etag must be `etag`
   * (quotes aside), else OBJECT_NOT_FOUND naming both: that upload is no longer there to read.
   * When the object carries a `sha256` in its metadata (as every object we upload does), the
   * bytes must match it.
   */
  async fetchFile(bucket: string, key: string, version: ObjectVersion = {}): Promise<FetchedObject> {
    const where = `s3://${bucket}/${key}${version.versionId ? ` (version ${version.versionId})` : ''}`;
    const dir = await mkdtemp(join(this.tempDir, 'heimdall-s3-'));
    const path = join(dir, basename(key) || 'object');
    const release = () => rm(dir, { recursive: true, force: true });
    try {
      const { sha256, headers } = await this.call(`download ${where}`, async () => {
        const response = await this.client.getObject(bucket, key, version.versionId ? { versionId: version.versionId } : undefined);
        // The client answers with the HTTP response itself: its headers describe these bytes.
        const headers: IncomingHttpHeaders = (response as Partial<{ headers: IncomingHttpHeaders }>).headers ?? {};
        const etag = unquoteEtag(String(headers.etag ?? ''));
        if (version.etag !== undefined && etag !== unquoteEtag(version.etag)) {
          response.destroy();
          throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `${where} has etag ${etag || '(none)'}, not ${unquoteEtag(version.etag)} as the notification named: that upload was replaced`);
        }
        const hash = createHash('sha256');
        const hashing = new Transform({
          transform(chunk: Buffer, _encoding, done) {
            hash.update(chunk);
            done(null, chunk);
          },
        });
        await pipeline(response, hashing, createWriteStream(path));
        return { sha256: hash.digest('hex'), headers };
      });
      const { size } = await stat(path);
      const announced = Number(headers['content-length']);
      if (headers['content-length'] !== undefined && size !== announced) throw new HeimdallError(ErrorCodes.IO_ERROR, `downloaded ${size} bytes of ${where}, expected ${announced}`);
      const expected = userMetadata(metaHeaders(headers))['sha256'];
      if (expected && expected !== sha256) throw new HeimdallError(ErrorCodes.IO_ERROR, `downloaded ${where} has sha256 ${sha256}, its metadata says ${expected}`);
      return { path, size, sha256, release };
    } catch (error) {
      await release();
      throw error;
    }
  }

  /** Creates the bucket on first use; another writer creating it at the same moment is fine. */
  private async ensureBucket(bucket: string): Promise<void> {
    if (this.readyBuckets.has(bucket)) return;
    await this.call(`create bucket ${bucket}`, async () => {
      if (await this.client.bucketExists(bucket)) return;
      await this.client.makeBucket(bucket, this.options.region).catch((error: unknown) => {
        if (!(error instanceof S3Error && (error.code === 'BucketAlreadyOwnedByYou' || error.code === 'BucketAlreadyExists'))) throw error;
      });
    });
    this.readyBuckets.add(bucket);
  }

  /** Runs one client operation with retries, and turns what fails into a HeimdallError with a stable code. */
  private async call<T>(what: string, operation: () => Promise<T>): Promise<T> {
    try {
      return await withRetry(operation, isTransient, this.retry);
    } catch (error) {
      // The origin only: an endpoint written with user:password@ must not reach a message.
      throw toHeimdallError(what, error, new URL(this.options.endpoint).origin);
    }
  }
}

/**
 * The minio client answers 408, 429 and 5xx statuses (its `retryHttpCodes`, minio-go's list) not
 * with an S3Error but with a plain Error naming the status, also with its own retry disabled.
 */
const RETRYABLE_STATUS = /^Request failed after \d+ retries: Error: Retryable HTTP status: \d+/;

function isTransient(error: unknown): boolean {
  if (error instanceof S3Error) return !error.code || TRANSIENT_CODES.has(error.code);
  return isNetworkError(error) || (error instanceof Error && RETRYABLE_STATUS.test(error.message));
}

function toHeimdallError(what: string, error: unknown, origin: string): HeimdallError {
  if (error instanceof HeimdallError) return error;
  const message = error instanceof Error ? error.message : String(error);
  // The client refuses names no object can have (an empty key, over 1024 characters) before asking.
  if (error instanceof InvalidBucketNameError || error instanceof InvalidObjectNameError) return new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `cannot ${what}: ${message}`, { cause: error });
  if (error instanceof S3Error && error.code) {
    const detail = `${error.code}: ${message}`;
    if (NOT_FOUND_CODES.has(error.code)) return new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `cannot ${what}: no such ${error.code === 'NoSuchBucket' ? 'bucket' : 'object'} (${error.code})`, { cause: error });
    if (AUTH_CODES.has(error.code)) return new HeimdallError(ErrorCodes.STORAGE_AUTH, `cannot ${what}: ${origin} rejected the credentials of S3_ACCESS_KEY / S3_SECRET_KEY (${detail})`, { cause: error });
    if (!TRANSIENT_CODES.has(error.code)) return new HeimdallError(ErrorCodes.STORAGE_REJECTED, `cannot ${what}: ${detail}`, { cause: error });
  }
  return new HeimdallError(ErrorCodes.IO_ERROR, `cannot ${what} at ${origin}: ${message || 'server error'}`, { cause: error });
}

/** S3 etags travel quoted (`"abc"`, `"abc-3"` for multipart); notifications and the client give them bare. */
export function unquoteEtag(etag: string): string {
  return etag.replace(/^(?:"|&quot;|&#34;)|(?:"|&quot;|&#34;)$/g, '');
}

/** A GET response's user metadata headers, named as `statObject` names them (`x-amz-meta-` stripped). */
function metaHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const prefix = 'x-amz-meta-';
  return Object.fromEntries(
    Object.entries(headers)
      .filter(([name, value]) => name.toLowerCase().startsWith(prefix) && typeof value === 'string')
      .map(([name, value]) => [name.slice(prefix.length), value as string]),
  );
}

/** Headers the client reports beside user metadata (minio's extractMetadata keeps them in one map). */
const STANDARD_HEADERS = new Set(['content-type', 'content-encoding', 'content-language', 'content-disposition', 'cache-control', 'expires']);

function userMetadata(metaData: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(metaData)
      .filter(([key]) => !STANDARD_HEADERS.has(key.toLowerCase()) && !key.toLowerCase().startsWith('x-amz-'))
      .map(([key, value]) => [key.toLowerCase(), decodeHeaderValue(String(value))]),
  );
}

/**
 * S3 user metadata travels as HTTP headers, which carry printable ASCII only: other values (a
 * checkpoint key with non-ASCII characters) are sent as an RFC 2047 encoded word, as S3 and MinIO
 * document for non-ASCII metadata, and decoded again by `stat`.
 */
function encodeHeaderValue(value: string): string {
  return /^[\x20-\x7e]*$/.test(value) ? value : `=?UTF-8?B?${Buffer.from(value, 'utf8').toString('base64')}?=`;
}

function decodeHeaderValue(value: string): string {
  const word = /^=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=$/i.exec(value);
  return word ? Buffer.from(word[1]!, 'base64').toString('utf8') : value;
}
