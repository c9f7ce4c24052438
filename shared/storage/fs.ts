import { createHash } from 'node:crypto';
import { copyFile, link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, relative, resolve, sep } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { isBucketName, type ObjectInfo, type ObjectStore } from './object-store.ts';

/**
 * The embedded ObjectStore: bucket `b`, key `k` is the file `<dataDir>/buckets/<b>/<k>`; its user
 * metadata and etag sit beside it in `<k>.meta.json`. Files are hard-linked in when possible (a
 * multi-GB checkpoint is not copied), written atomically (temp + rename) otherwise.
 */
export class FsObjectStore implements ObjectStore {
  private readonly root: string;

  constructor(dataDir: string) {
    this.root = resolve(dataDir, 'buckets');
  }

  uri(bucket: string, key: string): string {
    return pathToFileURL(this.pathOf(bucket, key)).href;
  }

  parseUri(uri: string): { bucket: string; key: string } {
    const path = fileURLToPath(uri);
    const [bucket, ...rest] = relative(this.root, path).split(sep);
    if (!bucket || bucket === '..' || rest.length === 0) throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `${uri} is not in this store`);
    return { bucket, key: rest.join('/') };
  }

  async stat(bucket: string, key: string): Promise<ObjectInfo | undefined> {
    try {
      return JSON.parse(await readFile(this.metaPath(bucket, key), 'utf8')) as ObjectInfo;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
  }

  async putFile(bucket: string, key: string, path: string, metadata: Record<string, string> = {}): Promise<ObjectInfo> {
    const target = this.pathOf(bucket, key);
    await mkdir(dirname(target), { recursive: true });
    const temporary = `${target}.${process.pid}.${Date.now()}.partial`;
    try {
      await link(path, temporary);
    } catch {
      await copyFile(path, temporary);
    }
    const stats = await stat(temporary);
    // Opaque like S3's: changes whenever the object is replaced, without hashing gigabytes again.
    const etag = createHash('md5').update(`${stats.size}:${stats.mtimeMs}:${stats.ino}:${Date.now()}`).digest('hex');
    const info: ObjectInfo = { size: stats.size, etag, metadata };
    await rename(temporary, target);
    await writeAtomically(this.metaPath(bucket, key), JSON.stringify(info, null, 2));
    return info;
  }

  async fetchFile(bucket: string, key: string): Promise<{ path: string; release(): Promise<void> }> {
    const path = this.pathOf(bucket, key);
    try {
      await stat(path);
    } catch {
      throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `no object ${key} in bucket ${bucket}`);
    }
    return { path, release: async () => undefined };
  }

  private pathOf(bucket: string, key: string): string {
    // Bucket names come from notifications: only S3-valid names, so none can climb out of the root.
    if (!isBucketName(bucket)) throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `invalid bucket name ${JSON.stringify(bucket)}`);
    const path = resolve(this.root, bucket, key);
    if (!path.startsWith(resolve(this.root, bucket) + sep)) throw new HeimdallError(ErrorCodes.OBJECT_NOT_FOUND, `key ${key} escapes bucket ${bucket}`);
    return path;
  }

  private metaPath(bucket: string, key: string): string {
    return `${this.pathOf(bucket, key)}.meta.json`;
  }
}

export async function writeAtomically(path: string, content: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const temporary = `${path}.${process.pid}.partial`;
  try {
    await writeFile(temporary, content);
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

