import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, open, rm, stat, type FileHandle } from 'node:fs/promises';
import type { Agent, IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client, InvalidBucketNameError, InvalidObjectNameError, S3Error } from 'minio';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { DEFAULT_RETRY, isNetworkError, withRetry, type RetryPolicy } from '../errors/retry.ts';
import type { FetchedObject, ListedObject, ObjectInfo, ObjectStore, ObjectVersion } from './object-store.ts';
import { endpointProblem, type ServerSideEncryption, type UploadChecksum } from './s3-settings.ts';

export interface S3Options {
  /** `http(s)://host:port` of an S3-protocol server (MinIO, AWS, ...), nothing after it (`endpointProblem`). */
  readonly endpoint: string;
  readonly accessKey: string;
  readonly secretKey: string;
  readonly region: string;
  /**
   * Buckets addressed by path, `host/bucket/key` (the default: MinIO and most self-hosted servers),
   * or, when false, by virtual host, `bucket.host/key` (AWS's way; the server's DNS must resolve it).
   */
  readonly forcePathStyle?: boolean;
  readonly sse?: ServerSideEncryption;
  /** Default `sha256`. */
  readonly checksum?: UploadChecksum;
  /**
   * Files larger than this go up as multipart uploads in parts of this size (at least 5 MiB, S3's
   * minimum; larger when a file needs more than 10,000 parts); smaller ones in one streamed PUT.
   * One part is held in memory at a time. Default 64 MiB, the minio client's.
   */
  readonly partSize?: number;
  readonly retry?: RetryPolicy;
  /** Where downloads are written (default: the OS temp dir). */
  readonly tempDir?: string;
  /** The agent for the connections to the server (a proxy, a CA, a name lookup of its own); default: the minio client's. */
  readonly transportAgent?: Agent;
}

/** A downloaded object: its bytes in a temporary file, and the sha256 computed while they arrived. */
/** A download: its size, and its sha256 computed on the way. */
export interface DownloadedObject extends FetchedObject {
  readonly size: number;
  readonly sha256: string;
}

/** S3 error codes of a server that is overloaded or failing for now (the rest are answers, not accidents). */
const TRANSIENT_CODES = new Set(['SlowDown', 'InternalError', 'ServiceUnavailable', 'RequestTimeout', 'RequestTimeTooSkewed', 'OperationAborted', 'XMinioServerNotInitialized']);
/** The key or its signature is not accepted: who we are is in question. */
const AUTH_CODES = new Set(['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken', 'AuthorizationHeaderMalformed']);
const NOT_FOUND_CODES = new Set(['NoSuchKey', 'NoSuchBucket', 'NoSuchVersion', 'NotFound']);

const MiB = 1 << 20;
/** The minio client's default part size. */
const DEFAULT_PART_SIZE = 64 * MiB;
/** S3's limit on the parts of one multipart upload. */
const MAX_PARTS = 10_000;
/** How long a failed multipart upload's abort is waited for. */
const ABORT_WAIT_MS = 5_000;

/**
 * The ObjectStore on an S3-protocol server through the `minio` client (DESIGN §2). Uris are
 * `s3://bucket/key`. Downloads stream to a temporary file, hashed on the way (checkpoints can be
 * several GB); uploads stream from the file, multipart above `partSize`, each request with an
 * integrity header the server checks (`x-amz-checksum-sha256`, or `Content-MD5` with the checksum
 * off) and the server-side encryption configured. Transient failures (connection errors, 5xx,
 * SlowDown) are retried with backoff, request by request; 4xx answers are not.
 */
export class S3ObjectStore implements ObjectStore {
  private readonly client: Client;
  private readonly retry: RetryPolicy;
  private readonly tempDir: string;
  private readonly partSize: number;
  private readonly checksum: UploadChecksum;
  private readonly readyBuckets = new Set<string>();

  constructor(private readonly options: S3Options) {
    const problem = endpointProblem(options.endpoint);
    if (problem) throw new HeimdallError(ErrorCodes.USAGE, `S3 endpoint ${problem}`);
    const url = new URL(options.endpoint);
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.checksum = options.checksum ?? 'sha256';
    this.client = new Client({
      endPoint: url.hostname,
      port: url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80,
      useSSL: url.protocol === 'https:',
      accessKey: options.accessKey,
      secretKey: options.secretKey,
      region: options.region,
      pathStyle: options.forcePathStyle ?? true,
      ...(options.transportAgent ? { transportAgent: options.transportAgent } : {}),
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

  /**
   * One streamed PUT up to the part size, a multipart upload above it. The object's headers
   * (content type, server-side encryption, user metadata percent-encoded) go with the PUT or the
   * multipart upload's creation.
   */
  async putFile(bucket: string, key: string, path: string, metadata: Record<string, string> = {}): Promise<ObjectInfo> {
    await this.ensureBucket(bucket);
    const { size } = await stat(path);
    const headers: Record<string, string> = {
      'Content-Type': key.endsWith('.json') ? 'application/json' : 'application/octet-stream',
      ...this.encryptionHeaders(),
      ...Object.fromEntries(Object.entries(metadata).map(([k, v]) => [`x-amz-meta-${k}`, encodeMetadataValue(v)])),
    };
    const etag = size <= this.partSize ? await this.putSingle(bucket, key, path, size, headers) : await this.putMultipart(bucket, key, path, size, headers);
    return { size, etag, metadata: { ...metadata } };
  }

  private async putSingle(bucket: string, key: string, path: string, size: number, headers: Record<string, string>): Promise<string> {
    const digest = await digestFile(path);
    const response = await this.call(`upload to s3://${bucket}/${key}`, () =>
      this.client.makeRequestStreamAsync(
        { method: 'PUT', bucketName: bucket, objectName: key, headers: { ...headers, ...this.integrityHeaders(digest), 'Content-Length': size } },
        createReadStream(path),
        // Plain HTTP signs the payload's sha256 (the minio client's rule); https sends it unsigned.
        this.client.enableSHA256 ? digest.sha256.toString('hex') : '',
        [200],
        this.options.region,
      ),
    );
    response.resume();
    return unquoteEtag(String(response.headers.etag ?? ''));
  }

  /**
   * Parts read one at a time, each sent with its own integrity header and retried on its own; the
   * completion lists each part's checksum, as S3 requires of an upload created with one. An upload
   * that fails is aborted, so that no parts are left behind to be billed.
   */
  private async putMultipart(bucket: string, key: string, path: string, size: number, headers: Record<string, string>): Promise<string> {
    const where = `s3://${bucket}/${key}`;
    const algorithm = this.checksum === 'sha256' ? { 'x-amz-checksum-algorithm': 'SHA256' } : {};
    const uploadId = await this.call(`start a multipart upload to ${where}`, () => this.client.initiateNewMultipartUpload(bucket, key, { ...headers, ...algorithm }));
    const upload = `uploadId=${encodeURIComponent(uploadId)}`;
    try {
      const partSize = Math.max(this.partSize, Math.ceil(size / MAX_PARTS / MiB) * MiB);
      const parts: Array<{ number: number; etag: string; checksum?: string }> = [];
      const file = await open(path);
      try {
        for (let number = 1, offset = 0; offset < size; number++, offset += partSize) {
          const chunk = await readChunk(file, offset, Math.min(partSize, size - offset), path);
          const integrity = this.integrityHeaders(digestOf(chunk));
          const response = await this.call(`upload part ${number} of ${where}`, () =>
            this.client.makeRequestAsync({ method: 'PUT', bucketName: bucket, objectName: key, query: `partNumber=${number}&${upload}`, headers: { ...integrity, 'Content-Length': chunk.length } }, chunk, [200]),
          );
          response.resume();
          parts.push({ number, etag: unquoteEtag(String(response.headers.etag ?? '')), checksum: integrity['x-amz-checksum-sha256'] });
        }
      } finally {
        await file.close();
      }
      const completion = `<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${parts
        .map((p) => `<Part><PartNumber>${p.number}</PartNumber><ETag>${p.etag}</ETag>${p.checksum ? `<ChecksumSHA256>${p.checksum}</ChecksumSHA256>` : ''}</Part>`)
        .join('')}</CompleteMultipartUpload>`;
      return await this.call(`complete the multipart upload to ${where}`, async () => {
        const response = await this.client.makeRequestAsync({ method: 'POST', bucketName: bucket, objectName: key, query: upload, headers: { 'Content-Type': 'application/xml' } }, completion, [200]);
        return completedEtag(await readText(response));
      });
    } catch (error) {
      // Best effort, and bounded: the error that matters is the first. A server that answered a part
      // before reading its body and kept the connection open (LocalStack does) stalls the next request on it.
      await Promise.race([this.client.abortMultipartUpload(bucket, key, uploadId).catch(() => undefined), sleep(ABORT_WAIT_MS, undefined, { ref: false })]);
      throw error;
    }
  }

  /** The header the server checks a request's body against, refusing a body that does not match it (BadDigest). */
  private integrityHeaders(digest: Digest): Record<string, string> {
    return this.checksum === 'sha256' ? { 'x-amz-checksum-sha256': digest.sha256.toString('base64') } : { 'Content-MD5': digest.md5.toString('base64') };
  }

  private encryptionHeaders(): Record<string, string> {
    const sse = this.options.sse;
    if (!sse) return {};
    return sse.algorithm === 'aws:kms'
      ? { 'x-amz-server-side-encryption': 'aws:kms', 'x-amz-server-side-encryption-aws-kms-key-id': sse.kmsKeyId }
      : { 'x-amz-server-side-encryption': 'AES256' };
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
  async fetchFile(bucket: string, key: string, version: ObjectVersion = {}): Promise<DownloadedObject> {
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

  /**
   * The versions listing (ListObjectVersions), LIST_PAGE_KEYS entries a page, each page asked for
   * when the caller gets to it; of each key its current version, not a delete marker. In a bucket
   * that keeps versions it comes with its id: a notification from such a bucket names the version,
   * and so must a listing, for the same upload to be known as the same. In one that does not, the
   * id is S3's "null", and none is named; one listing for both, without asking which it is.
   */
  async *list(bucket: string, prefix = ''): AsyncIterable<ListedObject> {
    let markers: { keyMarker?: string; versionIdMarker?: string } = {};
    for (;;) {
      // The client sends these two markers as given: escaped here, as a query needs them.
      const query = { Delimiter: '', MaxKeys: LIST_PAGE_KEYS, IncludeVersion: true, ...Object.fromEntries(Object.entries(markers).map(([k, v]) => [k, queryEscape(v)])) };
      const page = await this.call(`list s3://${bucket}/${prefix}`, () => this.client.listObjectsQuery(bucket, prefix, '', query));
      for (const item of (page.objects ?? []) as ListedVersion[]) {
        if (item.name === undefined || String(item.isLatest) !== 'true' || item.isDeleteMarker) continue;
        const versionId = item.versionId && item.versionId !== 'null' ? { versionId: item.versionId } : {};
        yield { key: item.name, size: item.size ?? 0, etag: unquoteEtag(item.etag ?? ''), lastModified: item.lastModified ?? new Date(0), ...versionId };
      }
      if (!page.isTruncated || !page.keyMarker) return;
      markers = { keyMarker: page.keyMarker, ...(page.versionIdMarker ? { versionIdMarker: page.versionIdMarker } : {}) };
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
      throw toHeimdallError(what, error, new URL(this.options.endpoint).origin);
    }
  }
}

/** Entries per listing request: S3's most. */
const LIST_PAGE_KEYS = 1000;

/** A versions-listing entry as the minio client parses it (its types leave out the version fields). */
interface ListedVersion {
  readonly name?: string;
  readonly size?: number;
  readonly etag?: string;
  readonly lastModified?: Date;
  readonly versionId?: string;
  readonly isLatest?: boolean | string;
  readonly isDeleteMarker?: boolean;
}

/** A query value escaped as S3's signature expects (RFC 3986 unreserved characters kept). */
function queryEscape(value: string): string {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
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
    if (error.code === 'AccessDenied') {
      // A HEAD is answered with a bare 403 (no body, no code): the client names it AccessDenied, but
      // the server did not say whether the key or its permissions are at fault.
      if (isBareStatusError(error)) return new HeimdallError(ErrorCodes.STORAGE_AUTH, `cannot ${what}: ${origin} answered 403: it rejected the credentials of S3_ACCESS_KEY / S3_SECRET_KEY or denied them this`, { cause: error });
      return new HeimdallError(ErrorCodes.STORAGE_FORBIDDEN, `cannot ${what}: ${origin} denied it to S3_ACCESS_KEY (${detail}): a bucket or IAM policy forbids it (one that requires server-side encryption needs S3_SSE)`, { cause: error });
    }
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
      .map(([key, value]) => [key.toLowerCase(), decodeMetadataValue(String(value))]),
  );
}

/**
 * S3 user metadata travels as HTTP headers, which carry ASCII: a value is kept readable and every
 * byte outside printable ASCII, space and `%` included, is percent-encoded (RFC 3986, of its UTF-8
 * bytes), so a checkpoint key like `runs/épreuve 3.pth` is stored as `runs/%C3%A9preuve%203.pth`,
 * the same for every client, and `stat` gives back the original.
 */
export function encodeMetadataValue(value: string): string {
  return value.replace(/[^\x21-\x24\x26-\x7e]+/g, (run) => [...Buffer.from(run, 'utf8')].map((byte) => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`).join(''));
}

function decodeMetadataValue(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value; // not percent-encoded by us: another client's value with a bare `%`
  }
}

/** What is read and sent of one upload request's body: its integrity header is computed from it. */
interface Digest {
  readonly sha256: Buffer;
  readonly md5: Buffer;
}

function digestOf(chunk: Buffer): Digest {
  return { sha256: createHash('sha256').update(chunk).digest(), md5: createHash('md5').update(chunk).digest() };
}

async function digestFile(path: string): Promise<Digest> {
  const sha256 = createHash('sha256');
  const md5 = createHash('md5');
  for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) {
    sha256.update(chunk);
    md5.update(chunk);
  }
  return { sha256: sha256.digest(), md5: md5.digest() };
}

/** `length` bytes at `offset`, or IO_ERROR when the file ends before: it changed while being uploaded. */
async function readChunk(file: FileHandle, offset: number, length: number, path: string): Promise<Buffer> {
  const chunk = Buffer.allocUnsafe(length);
  for (let read = 0; read < length; ) {
    const { bytesRead } = await file.read(chunk, read, length - read, offset + read);
    if (bytesRead === 0) throw new HeimdallError(ErrorCodes.IO_ERROR, `${path} ended at ${offset + read} bytes while being uploaded`);
    read += bytesRead;
  }
  return chunk;
}

async function readText(response: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of response as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The etag of a completed multipart upload. S3 may answer the completion 200 and still fail it,
 * with an `<Error>` document in the body (its documented behaviour): that is an S3Error like any.
 */
function completedEtag(xml: string): string {
  const field = (name: string) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml)?.[1];
  if (/<Error>/.test(xml)) {
    const error = new S3Error(field('Message') ?? 'the multipart upload failed');
    error.code = field('Code') ?? 'InternalError';
    throw error;
  }
  return unquoteEtag(field('ETag') ?? '');
}

/**
 * An error the minio client made from a response's status alone (a HEAD has no body to carry an
 * error code): it passes the response headers as the error's cause, which it never does for an
 * error the server described.
 */
function isBareStatusError(error: S3Error): boolean {
  return error.cause !== undefined;
}
