import { createHash, randomBytes } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { coldCopy, coldCopyHashed } from './cold-copy.ts';
import { isBucketName, type FetchedObject, type ListedObject, type ObjectInfo, type ObjectStore, type ObjectVersion, type PutOptions } from './object-store.ts';

/** S3's limit on a key. */
const MAX_KEY_BYTES = 1024;
/** What one file name may be (NAME_MAX): each `/`-separated segment of a key becomes one. */
const MAX_SEGMENT_BYTES = 255;
/** A dead process's temporary this old is removed (an upload of a multi-GB file takes minutes, not an hour). */
const STALE_TEMPORARY_MS = 60 * 60 * 1000;

/**
 * The embedded ObjectStore: bucket `b`, key `k` is the file `<dataDir>/buckets/<b>/<k>`, a copy of
 * its own (cold-copy.ts: a copy-on-write clone where the file system has them, else written past the
 * page cache; never a hard link, which would let an edit of the source file change the stored object
 * under its run id), or a caller's scratch file moved in (`move`).
 *
 * Beside the buckets, in names no bucket can have (bucket names never start with a dot):
 * - `.tmp/` holds the temporaries of uploads in progress, with short names (`<pid>-<n>`), so a key
 *   may use the whole NAME_MAX in its last segment; each is removed on every way out of `putFile`,
 *   and those of processes that died (kill -9) by the next upload.
 * - `.meta/<b>/<sha256(k)[0:2]>/<sha256(k)>.json` holds the object's etag and user metadata, with the
 *   size and mtime of the file they describe: when the file changed behind the store's back (or
 *   the upload stopped between file and metadata), `stat` reports a derived etag and no metadata
 *   rather than claims about bytes that are no longer there. For a file it hashed itself
 *   (putFileByDigest) it keeps the digest too, which `fetchFile` vouches for on stricter terms: the
 *   stored file's ctime and inode too (a write in place that restored the mtime still moved its ctime).
 * Metadata of the older layout (`<k>.meta.json` beside the object) is still read.
 * Keys are S3's (up to 1024 bytes), each segment a file name (up to 255 bytes); a longer one cannot
 * be stored here (STORAGE_REJECTED) and is never found.
 */
export class FsObjectStore implements ObjectStore {
  private readonly root: string;
  private readonly tmp: string;
  private readonly metaRoot: string;
  private swept = false;

  constructor(dataDir: string) {
    this.root = resolve(dataDir, 'buckets');
    this.tmp = join(this.root, '.tmp');
    this.metaRoot = join(this.root, '.meta');
  }

  uri(bucket: string, key: string): string {
    return pathToFileURL(this.pathOf(bucket, key)).href;
  }

  parseUri(uri: string): { bucket: string; key: string } {
    const notOurs = (why: string) => new HeimdallError(ErrorCodes.INVALID_EVENT, `${JSON.stringify(uri)} is not a file:// uri of this store: ${why}`);
    if (!uri.startsWith('file:///')) throw notOurs('not an absolute file:/// uri');
    let path: string;
    try {
      path = fileURLToPath(uri);
    } catch (error) {
      throw notOurs((error as Error).message);
    }
    const [bucket, ...rest] = relative(this.root, path).split(sep);
    if (!bucket || !isBucketName(bucket) || rest.length === 0) throw notOurs('outside its buckets');
    return { bucket, key: rest.join('/') };
  }

  async stat(bucket: string, key: string): Promise<ObjectInfo | undefined> {
    return (await this.current(bucket, key))?.info;
  }

  /** The object and, where this store hashed it itself and it is as the store left it, its sha256. */
  private async current(bucket: string, key: string): Promise<{ info: ObjectInfo; sha256?: string; file: BigIntStats } | undefined> {
    const path = this.pathOf(bucket, key);
    if (unstorable(key)) return undefined;
    const file = await stat(path, { bigint: true }).catch(missing);
    if (!file?.isFile()) return undefined;
    const size = Number(file.size);
    const meta = await readJson<StoredMeta>(this.metaPath(bucket, key));
    if (meta && meta.key === key && meta.size === size && meta.mtimeNs === String(file.mtimeNs)) {
      // The digest only while nothing has touched the file since: a write in place that restored its
      // mtime (`touch -d`, `cp -p`) still moved its ctime, which no one can set back.
      const untouched = meta.ctimeNs === String(file.ctimeNs) && meta.ino === String(file.ino);
      return { info: { size, etag: meta.etag, metadata: meta.metadata }, file, ...(meta.sha256 && untouched ? { sha256: meta.sha256 } : {}) };
    }
    if (!meta) {
      const legacy = await readJson<ObjectInfo>(`${path}.meta.json`);
      if (legacy && legacy.size === size) return { info: { size, etag: legacy.etag, metadata: legacy.metadata }, file };
    }
    // Not the bytes the metadata describes: an etag of what is there, and no claims about it.
    return { info: { size, etag: createHash('md5').update(`${size}:${file.mtimeNs}:${file.ino}`).digest('hex'), metadata: {} }, file };
  }

  async putFile(bucket: string, key: string, path: string, metadata: Record<string, string> = {}, options: PutOptions = {}): Promise<ObjectInfo> {
    this.checkStorable(bucket, key);
    return this.storeCopy(bucket, path, async (temporary) => {
      if (!options.move || !(await moved(path, temporary))) await coldCopy(path, temporary);
      return { key, metadata };
    });
  }

  /**
   * Stores the file at `path` under a key named by its content (ingest's `<runId>/<name>`), with its
   * sha256 in the metadata: hashed as it is copied in, so the digest is that of the bytes stored
   * (cold-copy.ts), in one read of the file. A stop (`signal`) once it is hashed stores nothing.
   */
  async putFileByDigest(bucket: string, path: string, keyOf: (sha256: string) => string, options: { metadata?: Record<string, string>; signal?: AbortSignal } = {}): Promise<{ key: string; sha256: string; object: ObjectInfo }> {
    // An invalid bucket is refused before the file is read.
    this.bucketDir(bucket);
    let named = { key: '', sha256: '' };
    const object = await this.storeCopy(bucket, path, async (temporary) => {
      const before = await stat(path, { bigint: true });
      const sha256 = await coldCopyHashed(path, temporary);
      // A file still being written when it was copied: what is stored, though hashed, may be half of
      // it. Nothing is stored (a write in place moves its ctime, a replacement its inode).
      const after = await stat(path, { bigint: true }).catch(missing);
      if (!after || !sameFile(before, after)) {
        throw new HeimdallError(ErrorCodes.IO_ERROR, `${path} changed while it was being stored (still being written?); store it again once it is complete`);
      }
      options.signal?.throwIfAborted();
      named = { key: keyOf(sha256), sha256 };
      this.checkStorable(bucket, named.key);
      return { key: named.key, metadata: { ...options.metadata, sha256 }, sha256 };
    });
    return { ...named, object };
  }

  /** Refuses a key this store cannot hold (STORAGE_REJECTED) or one outside its bucket. */
  private checkStorable(bucket: string, key: string): void {
    this.pathOf(bucket, key);
    const reason = unstorable(key);
    if (reason) throw new HeimdallError(ErrorCodes.STORAGE_REJECTED, `key ${key.length > 80 ? `${key.slice(0, 80)}…` : key} ${reason}: the embedded store cannot hold it`);
  }

  /**
   * Stores a copy of the regular file at `path` in `bucket`: `fill` writes it to a temporary (and says
   * under which key), which is then renamed into place with its metadata; the temporary never
   * outlives a failure.
   */
  private async storeCopy(bucket: string, path: string, fill: (temporary: string) => Promise<{ key: string; metadata: Record<string, string>; sha256?: string }>): Promise<ObjectInfo> {
    const source = await stat(path);
    if (!source.isFile()) throw new HeimdallError(ErrorCodes.NOT_A_FILE, `${path} is not a regular file: cannot store it`);
    await this.sweepOnce();
    await mkdir(this.tmp, { recursive: true });
    const temporary = join(this.tmp, `${process.pid}-${nextId()}`);
    try {
      const { key, metadata, sha256 } = await fill(temporary);
      const copied = await stat(temporary, { bigint: true });
      const size = Number(copied.size);
      // Opaque like S3's: new on every upload, without hashing gigabytes again.
      const etag = createHash('md5').update(`${size}:${copied.mtimeNs}:${copied.ino}:${randomBytes(8).toString('hex')}`).digest('hex');
      const target = this.pathOf(bucket, key);
      await mkdir(dirname(target), { recursive: true });
      await rename(temporary, target);
      // The rename moved the file's ctime: what a vouched digest is held to is the stored file as it is
      // now, if it is still ours (the inode the rename kept): another upload of the key may have been
      // renamed over it meanwhile, and its bytes are not those hashed.
      const stored = sha256 ? await stat(target, { bigint: true }).catch(missing) : undefined;
      const vouched = sha256 && stored?.ino === copied.ino ? { sha256, ctimeNs: String(stored.ctimeNs), ino: String(copied.ino) } : {};
      const meta: StoredMeta = { key, size, mtimeNs: String(copied.mtimeNs), etag, metadata, ...vouched };
      await writeAtomically(this.metaPath(bucket, key), JSON.stringify(meta, null, 2));
      return { size, etag, metadata };
    } finally {
      await rm(temporary, { force: true });
    }
  }

  async fetchFile(bucket: string, key: string, version?: ObjectVersion): Promise<FetchedObject> {
    const path = this.pathOf(bucket, key);
    const object = await this.current(bucket, key);
    if (!object) throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `no object ${key} in bucket ${bucket}`);
    const { info } = object;
    // No versions are kept here: the version a notification named is either what is there now
    // (same etag) or gone.
    if (version?.etag !== undefined && unquote(version.etag) !== unquote(info.etag)) {
      throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `object ${key} in bucket ${bucket} has etag ${info.etag}, not ${version.etag} as notified: it was replaced, and this store keeps no versions`);
    }
    // The reader reads the store's own file: it asks, once done, whether anything changed it meanwhile.
    const unchanged = async () => {
      const now = await stat(path, { bigint: true }).catch(missing);
      return now !== undefined && sameFile(object.file, now);
    };
    return { path, ...(object.sha256 ? { sha256: object.sha256 } : {}), unchanged, release: async () => undefined };
  }

  /**
   * Walks the bucket's folder, from the deepest folder the prefix names; keys in UTF-8 byte order,
   * as S3 lists them. Metadata files of the older layout (`<k>.meta.json` beside `<k>`) are no objects.
   */
  async *list(bucket: string, prefix = ''): AsyncIterable<ListedObject> {
    const bucketDir = this.bucketDir(bucket);
    if (!(await stat(bucketDir).catch(missing))?.isDirectory()) throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `no bucket ${bucket}`);
    const folder = resolve(bucketDir, prefix.slice(0, prefix.lastIndexOf('/') + 1));
    // A prefix climbing out of the bucket (`../`) names no key of it.
    if (folder !== bucketDir && !folder.startsWith(bucketDir + sep)) return;
    const keys = (await filesUnder(folder)).map((path) => relative(bucketDir, path).split(sep).join('/'));
    const present = new Set(keys);
    const wanted = keys.filter((key) => key.startsWith(prefix) && !(key.endsWith(LEGACY_META_SUFFIX) && present.has(key.slice(0, -LEGACY_META_SUFFIX.length))));
    for (const key of wanted.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))) {
      const [file, info] = await Promise.all([stat(this.pathOf(bucket, key)).catch(missing), this.stat(bucket, key)]);
      // Removed while we listed: no longer an object.
      if (!file || !info) continue;
      yield { key, size: info.size, etag: info.etag, lastModified: file.mtime };
    }
  }

  private pathOf(bucket: string, key: string): string {
    const path = resolve(this.bucketDir(bucket), key);
    if (!path.startsWith(resolve(this.root, bucket) + sep)) throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `key ${key} escapes bucket ${bucket}`);
    return path;
  }

  private bucketDir(bucket: string): string {
    // Bucket names come from notifications: only S3-valid names, so none can climb out of the root.
    if (!isBucketName(bucket)) throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `invalid bucket name ${JSON.stringify(bucket)}`);
    return resolve(this.root, bucket);
  }

  private metaPath(bucket: string, key: string): string {
    const digest = createHash('sha256').update(key).digest('hex');
    return join(this.metaRoot, bucket, digest.slice(0, 2), `${digest}.json`);
  }

  /**
   * Removes temporaries left by processes that died mid-upload (once per store). Only old ones: a
   * process of another container sharing the data dir has a pid this one cannot see.
   */
  private async sweepOnce(): Promise<void> {
    if (this.swept) return;
    this.swept = true;
    const names = await readdir(this.tmp).catch(() => [] as string[]);
    for (const name of names) {
      const pid = Number(name.split('-')[0]);
      if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || isAlive(pid)) continue;
      const path = join(this.tmp, name);
      const modified = await stat(path).then((s) => s.mtimeMs, () => undefined);
      if (modified !== undefined && Date.now() - modified > STALE_TEMPORARY_MS) await rm(path, { force: true }).catch(() => undefined);
    }
  }
}

/** What `.meta/` holds for an object. */
interface StoredMeta {
  readonly key: string;
  readonly size: number;
  /** The stored file's mtime in nanoseconds: the metadata is the file's only while it has this one. */
  readonly mtimeNs: string;
  readonly etag: string;
  readonly metadata: Record<string, string>;
  /** The file's sha256, where this store computed it as it stored the file (putFileByDigest). */
  readonly sha256?: string;
  /** With `sha256`: the stored file's ctime (ns) and inode, which the digest is vouched for only while they hold. */
  readonly ctimeNs?: string;
  readonly ino?: string;
}

/** The same file, not written to in between: a write moves mtime and ctime, a replacement the inode. */
function sameFile(a: BigIntStats, b: BigIntStats): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

/** Moves `path` to `temporary` (false when they lie on two filesystems: then it must be copied). */
async function moved(path: string, temporary: string): Promise<boolean> {
  try {
    await rename(path, temporary);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EXDEV') return false;
    throw error;
  }
}

const LEGACY_META_SUFFIX = '.meta.json';

/** The regular files in a folder and its subfolders; none when it does not exist. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(missing);
  if (!entries) return [];
  const nested = await Promise.all(entries.map((entry) => (entry.isDirectory() ? filesUnder(join(dir, entry.name)) : entry.isFile() ? [join(dir, entry.name)] : [])));
  return nested.flat();
}

/** Why a key cannot be a path here, if it cannot. */
function unstorable(key: string): string | undefined {
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) return `is longer than ${MAX_KEY_BYTES} bytes`;
  if (key.split('/').some((segment) => Buffer.byteLength(segment) > MAX_SEGMENT_BYTES)) return `has a segment longer than ${MAX_SEGMENT_BYTES} bytes`;
  return undefined;
}

const unquote = (etag: string) => etag.replace(/^"|"$/g, '');

function missing(error: NodeJS.ErrnoException): undefined {
  if (error.code === 'ENOENT' || error.code === 'ENOTDIR' || error.code === 'ENAMETOOLONG') return undefined;
  throw error;
}

async function readJson<T>(path: string): Promise<T | undefined> {
  const text = await readFile(path, 'utf8').catch(missing);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined; // a torn write of an older version: treated as absent
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let counter = 0;
const nextId = () => `${Date.now().toString(36)}${(counter++).toString(36)}`;

/** Replaces `path` with `content` atomically (a temporary beside it, then a rename); the temporary never outlives a failure. */
export async function writeAtomically(path: string, content: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  // Unique per write: two writes of one file in this process never share a temporary.
  const temporary = `${path}.${process.pid}-${nextId()}.partial`;
  try {
    await writeFile(temporary, content);
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}
