import { existsSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { FsObjectStore } from './fs.ts';

/** Run around the store's hash of a file it copied (below the O_DIRECT size): writers racing the store. */
const race = vi.hoisted(() => ({ beforeHash: undefined as (() => Promise<void>) | undefined, afterHash: undefined as (() => Promise<void>) | undefined }));
/** Runs once the store has renamed an upload into place: another upload of the same key, landing just after. */
const landing = vi.hoisted(() => ({ afterRename: undefined as ((target: string) => Promise<void>) | undefined }));
vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  const rename: typeof actual.rename = async (from, to) => {
    await actual.rename(from, to);
    const after = landing.afterRename;
    landing.afterRename = undefined;
    await after?.(String(to));
  };
  return { ...actual, rename };
});
vi.mock('../runtime/sha256.ts', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../runtime/sha256.ts')>();
  return { ...actual, sha256File: async (...args: Parameters<typeof actual.sha256File>) => {
    await race.beforeHash?.();
    const digest = await actual.sha256File(...args);
    await race.afterHash?.();
    return digest;
  } };
});

/** Maps the file, dirties its first page, then on `write` writes that page again and says whether that moved the file's ctime. */
const MAPPED_WRITER = `
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED)
m[0] = m[0]
print('mapped', flush=True)
sys.stdin.readline()
before = os.fstat(fd).st_ctime_ns
m[0:16] = b'checkpoint bytez'
print('written', 'seen' if os.fstat(fd).st_ctime_ns != before else 'unseen', flush=True)
sys.stdin.readline()
`;

/** Sets a file's mtime to the nanosecond (`touch -d`: Node's utimes takes seconds as a double, which cannot hold every nanosecond). */
function setMtimeNs(path: string, mtimeNs: bigint): void {
  execFileSync('touch', ['-m', '-d', `@${mtimeNs / 1_000_000_000n}.${String(mtimeNs % 1_000_000_000n).padStart(9, '0')}`, path]);
}

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});

/** A store in a fresh data dir, and a source file with the given content. */
async function fresh(name: string, content = 'weights') {
  const dataDir = join(dir, name);
  const source = join(dir, `${name}.bin`);
  await writeFile(source, content);
  return { dataDir, source, store: new FsObjectStore(dataDir), leftovers: () => readdir(join(dataDir, 'buckets/.tmp')).catch(() => []) };
}

describe('FsObjectStore', () => {
  it('keeps bucket b, key k at <dataDir>/buckets/b/k with its metadata', async () => {
    const store = new FsObjectStore(join(dir, 'data'));
    await writeFile(join(dir, 'source.bin'), 'weights');
    const info = await store.putFile('heimdall-models', 'models/localization/abc/model.onnx', join(dir, 'source.bin'), { sha256: 'x' });
    expect(await readFile(join(dir, 'data/buckets/heimdall-models/models/localization/abc/model.onnx'), 'utf8')).toBe('weights');
    expect(await store.stat('heimdall-models', 'models/localization/abc/model.onnx')).toEqual(info);
    expect(info).toMatchObject({ size: 7, metadata: { sha256: 'x' } });
    const uri = store.uri('heimdall-models', 'models/localization/abc/model.onnx');
    expect(store.parseUri(uri)).toEqual({ bucket: 'heimdall-models', key: 'models/localization/abc/model.onnx' });
  });

  it('reports a missing object as OBJECT_NOT_FOUND and refuses keys that escape the bucket', async () => {
    const store = new FsObjectStore(join(dir, 'data'));
    expect(await store.stat('bucket-b', 'nope')).toBeUndefined();
    await expect(store.fetchFile('bucket-b', 'nope')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    await expect(store.putFile('bucket-b', '../../escape', join(dir, 'source.bin'))).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    await expect(store.putFile('..', 'x', join(dir, 'source.bin'))).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND', message: expect.stringMatching(/invalid bucket/) });
  });

  it('stores its own copy: editing or rewriting the source afterwards leaves the object as it was', async () => {
    const { store, source, dataDir } = await fresh('copy', 'original bytes');
    const info = await store.putFile('heimdall-checkpoints', 'run/ckpt.pth', source, { sha256: 'of-the-original' });
    const stored = join(dataDir, 'buckets/heimdall-checkpoints/run/ckpt.pth');
    // Never a hard link: the source keeps one name, the object is another file.
    expect((await stat(source)).nlink).toBe(1);
    expect((await stat(stored)).ino).not.toBe((await stat(source)).ino);
    await appendFile(source, ' and an edit in place');
    await writeFile(source, 'rewritten');
    expect(await readFile(stored, 'utf8')).toBe('original bytes');
    expect(await store.stat('heimdall-checkpoints', 'run/ckpt.pth')).toEqual(info);
  });

  it('stores a file under a key named by its sha256, hashed as it is copied in (putFileByDigest)', async () => {
    // Past the hashing worker's 4 MiB chunk, so the copy is written in several chunks.
    const content = randomBytes(9 * 1024 * 1024 + 5);
    const { store, source, dataDir, leftovers } = await fresh('by-digest');
    await writeFile(source, content);
    const sha256 = createHash('sha256').update(content).digest('hex');
    const stored = await store.putFileByDigest('heimdall-checkpoints', source, (digest) => `${digest.slice(0, 16)}/ckpt.pth`, { metadata: { origin: 'test' } });
    expect(stored).toMatchObject({ key: `${sha256.slice(0, 16)}/ckpt.pth`, sha256, object: { size: content.byteLength, metadata: { origin: 'test', sha256 } } });
    const path = join(dataDir, 'buckets/heimdall-checkpoints', stored.key);
    expect((await readFile(path)).equals(content)).toBe(true);
    expect((await stat(path)).ino).not.toBe((await stat(source)).ino);
    expect(await store.stat('heimdall-checkpoints', stored.key)).toEqual(stored.object);
    expect(await leftovers()).toEqual([]);
  });

  it('stores nothing by digest when the key it names cannot be held, or the upload was stopped once hashed', async () => {
    const { store, source, dataDir, leftovers } = await fresh('by-digest-refused');
    await expect(store.putFileByDigest('heimdall-checkpoints', source, () => 'k'.repeat(300))).rejects.toMatchObject({ code: 'STORAGE_REJECTED' });
    const stop = new AbortController();
    stop.abort(new Error('stopped'));
    await expect(store.putFileByDigest('heimdall-checkpoints', source, (digest) => `${digest}/ckpt.pth`, { signal: stop.signal })).rejects.toThrow('stopped');
    await expect(store.putFileByDigest('..', source, (digest) => digest)).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    expect(await leftovers()).toEqual([]);
    expect(await readdir(join(dataDir, 'buckets')).catch(() => [])).toEqual(['.tmp']);
  });

  it('leaves no temporary behind, after uploads that succeed, fail, or died with their process', async () => {
    const { store, source, dataDir, leftovers } = await fresh('temporaries');
    for (let i = 0; i < 3; i++) await store.putFile('bucket-b', 'same/key.pth', source);
    expect(await leftovers()).toEqual([]);
    // A file where the key's folder belongs: the upload fails, its copy is removed.
    await writeFile(join(dataDir, 'buckets/bucket-b/blocked'), '');
    await expect(store.putFile('bucket-b', 'blocked/key.pth', source)).rejects.toMatchObject({ code: expect.stringMatching(/ENOTDIR|EEXIST/) });
    expect(await leftovers()).toEqual([]);
    // What a kill -9 left an hour ago (a pid that is not running) goes with the next upload, in a new
    // process; a recent one stays (its pid may be another container's, sharing the data dir).
    const hoursAgo = new Date(Date.now() - 2 * 3600_000);
    await writeFile(join(dataDir, 'buckets/.tmp/999999999-dead'), 'half a checkpoint');
    await utimes(join(dataDir, 'buckets/.tmp/999999999-dead'), hoursAgo, hoursAgo);
    await writeFile(join(dataDir, 'buckets/.tmp/999999998-elsewhere'), 'an upload in progress');
    await new FsObjectStore(dataDir).putFile('bucket-b', 'other.pth', source);
    expect(await leftovers()).toEqual(['999999998-elsewhere']);
  });

  it('takes any legal file name: a 255-byte last segment stores, stats and fetches', async () => {
    const { store, source } = await fresh('long-names');
    for (const name of [`${'e'.repeat(240)}.pth`, `${'é'.repeat(125)}.pth`]) {
      expect(Buffer.byteLength(name)).toBeGreaterThanOrEqual(244);
      const key = `0123456789abcdef/${name}`;
      const info = await store.putFile('heimdall-checkpoints', key, source, { sha256: 's' });
      expect(await store.stat('heimdall-checkpoints', key)).toEqual(info);
      const fetched = await store.fetchFile('heimdall-checkpoints', key, { etag: info.etag });
      expect(await readFile(fetched.path, 'utf8')).toBe('weights');
    }
    const tooLong = `run/${'x'.repeat(256)}`;
    await expect(store.putFile('heimdall-checkpoints', tooLong, source)).rejects.toMatchObject({ code: 'STORAGE_REJECTED', message: expect.stringMatching(/segment longer than 255 bytes/) });
    expect(await store.stat('heimdall-checkpoints', tooLong)).toBeUndefined();
    await expect(store.fetchFile('heimdall-checkpoints', tooLong)).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    await expect(store.putFile('heimdall-checkpoints', 'k/'.repeat(513), source)).rejects.toMatchObject({ code: 'STORAGE_REJECTED', message: expect.stringMatching(/longer than 1024 bytes/) });
  });

  it('fetches the version a notification named, or says OBJECT_NOT_FOUND naming both etags when it was replaced', async () => {
    const { store, source } = await fresh('versions', 'first');
    const first = await store.putFile('bucket-b', 'runs/a.pth', source);
    expect((await store.fetchFile('bucket-b', 'runs/a.pth', { etag: `"${first.etag}"` })).path).toMatch(/runs\/a\.pth$/);
    await writeFile(source, 'second');
    const second = await store.putFile('bucket-b', 'runs/a.pth', source);
    expect(second.etag).not.toBe(first.etag);
    const stale = store.fetchFile('bucket-b', 'runs/a.pth', { etag: first.etag, versionId: 'v1' });
    await expect(stale).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND', message: expect.stringContaining(`runs/a.pth in bucket bucket-b has etag ${second.etag}, not ${first.etag}`) });
    // Without a version: whatever is there now.
    expect(await readFile((await store.fetchFile('bucket-b', 'runs/a.pth')).path, 'utf8')).toBe('second');
  });

  it('does not vouch for bytes changed behind its back: a new etag and no metadata', async () => {
    const { store, source, dataDir } = await fresh('tampered');
    const info = await store.putFile('bucket-b', 'model.onnx', source, { sha256: 'of-weights' });
    await writeFile(join(dataDir, 'buckets/bucket-b/model.onnx'), 'other bytes');
    const now = await store.stat('bucket-b', 'model.onnx');
    expect(now).toMatchObject({ size: 11 });
    expect(now!.metadata).toEqual({});
    expect(now!.etag).not.toBe(info.etag);
    await expect(store.fetchFile('bucket-b', 'model.onnx', { etag: info.etag })).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
  });

  it("vouches for a fetched file's sha256 only where it hashed the file itself, and only while the file is as it left it", async () => {
    const { store, source, dataDir } = await fresh('vouched', 'checkpoint bytes');
    const sha256 = createHash('sha256').update('checkpoint bytes').digest('hex');
    const { key } = await store.putFileByDigest('bucket-b', source, (digest) => `${digest.slice(0, 16)}/ckpt.pth`);
    const fetched = await store.fetchFile('bucket-b', key);
    expect(fetched).toMatchObject({ sha256 });
    expect(await fetched.unchanged!()).toBe(true);
    // A digest in the metadata is the uploader's claim, not the store's.
    await store.putFile('bucket-b', 'claimed.pth', source, { sha256 });
    expect(await store.fetchFile('bucket-b', 'claimed.pth')).not.toHaveProperty('sha256');
    await writeFile(join(dataDir, 'buckets/bucket-b', key), 'checkpoint bytez');
    expect(await store.fetchFile('bucket-b', key)).not.toHaveProperty('sha256');
    // What was fetched before the write is no longer the file it was vouched for.
    expect(await fetched.unchanged!()).toBe(false);
  });

  it('vouches for no digest once the file was written in place, even with its mtime set back to the nanosecond', async () => {
    const { store, source, dataDir } = await fresh('mtime-restored', 'checkpoint bytes');
    const { key, object } = await store.putFileByDigest('bucket-b', source, (digest) => `${digest.slice(0, 16)}/ckpt.pth`);
    const path = join(dataDir, 'buckets/bucket-b', key);
    const { mtimeNs } = await stat(path, { bigint: true });
    await writeFile(path, 'checkpoint bytez');
    // As `cp -p`, `rsync -a` or a restore from a tar leave it: same size, same mtime.
    setMtimeNs(path, mtimeNs);
    expect((await stat(path, { bigint: true })).mtimeNs).toBe(mtimeNs);
    expect(await store.stat('bucket-b', key)).toEqual(object);
    expect(await store.fetchFile('bucket-b', key)).not.toHaveProperty('sha256');
  });

  it('stores nothing when the file is written to while it is stored (the copy may hold part of each version)', async () => {
    const { store, source, leftovers, dataDir } = await fresh('racing', 'checkpoint bytes');
    race.afterHash = () => writeFile(source, 'checkpoint bytez');
    try {
      await expect(store.putFileByDigest('bucket-b', source, (digest) => `${digest.slice(0, 16)}/ckpt.pth`)).rejects.toMatchObject({
        code: 'IO_ERROR',
        message: expect.stringMatching(/changed while it was being stored/),
      });
    } finally {
      race.afterHash = undefined;
    }
    expect(await readdir(join(dataDir, 'buckets/bucket-b')).catch(() => [])).toEqual([]);
    expect(await leftovers()).toEqual([]);
    // Once the file is left alone, it is stored under the digest of what is there.
    const { key } = await store.putFileByDigest('bucket-b', source, (digest) => `${digest.slice(0, 16)}/ckpt.pth`);
    expect(await readFile(join(dataDir, 'buckets/bucket-b', key), 'utf8')).toBe('checkpoint bytez');
    expect(key.slice(0, 16)).toBe(createHash('sha256').update('checkpoint bytez').digest('hex').slice(0, 16));
  });

  it('vouches for the digest of the bytes it stored, even when the source changes without its times moving (a write through a shared mapping)', async () => {
    // Unseen only while the mapped page stays dirty: writeback in between makes the write fault and
    // move the ctime, and then the store must refuse the file. Tried until the write was unseen.
    let unseen = false;
    for (let attempt = 0; attempt < 3 && !unseen; attempt++) {
      const { store, source } = await fresh(`mapped-${attempt}`, 'checkpoint bytes'.padEnd(4096, '.'));
      const original = createHash('sha256').update(await readFile(source)).digest('hex');
      // A writer holding the file mapped (numpy.memmap, say): once it has dirtied a page, its next
      // writes to that page move neither mtime nor ctime, so no stat can see them.
      const writer = spawn('python3', ['-c', MAPPED_WRITER, source], { stdio: ['pipe', 'pipe', 'inherit'] });
      const lines = createInterface({ input: writer.stdout })[Symbol.asyncIterator]();
      const said = async () => (await lines.next()).value as string;
      try {
        expect(await said()).toBe('mapped');
        race.beforeHash = async () => {
          race.beforeHash = undefined;
          writer.stdin.write('write\n');
          const reply = await said();
          expect(reply).toMatch(/^written (seen|unseen)$/);
          unseen = reply === 'written unseen';
        };
        const storing = store.putFileByDigest('bucket-b', source, (digest) => `${digest.slice(0, 16)}/ckpt.pth`);
        const stored = await storing.catch((error: unknown) => error);
        expect(race.beforeHash).toBeUndefined();
        // The source did change.
        expect((await readFile(source, 'utf8')).slice(0, 16)).toBe('checkpoint bytez');
        if (!unseen) {
          expect(stored).toMatchObject({ code: 'IO_ERROR' });
          continue;
        }
        const { key, sha256 } = stored as Awaited<typeof storing>;
        const fetched = await store.fetchFile('bucket-b', key);
        expect({ sha256, vouched: fetched.sha256 }).toEqual({ sha256: original, vouched: original });
        expect(createHash('sha256').update(await readFile(fetched.path)).digest('hex')).toBe(original);
      } finally {
        race.beforeHash = undefined;
        writer.stdin.end();
      }
    }
    expect(unseen).toBe(true);
  });

  it('vouches for no digest when another upload of the key was renamed over its own before it could record it', async () => {
    const { store, source, dataDir } = await fresh('overtaken', 'checkpoint bytes');
    const key = 'run/ckpt.pth';
    landing.afterRename = async (target) => {
      // Of the same size and, as coarse timestamps would give it, the same mtime as the store's own.
      const { mtimeNs } = await stat(target, { bigint: true });
      const other = join(dataDir, 'other-upload');
      await writeFile(other, 'checkpoint bytez');
      setMtimeNs(other, mtimeNs);
      await rename(other, target);
    };
    await store.putFileByDigest('bucket-b', source, () => key);
    expect(landing.afterRename).toBeUndefined();
    expect(await readFile(join(dataDir, 'buckets/bucket-b', key), 'utf8')).toBe('checkpoint bytez');
    expect(await store.fetchFile('bucket-b', key)).not.toHaveProperty('sha256');
  });

  it('moves a scratch file in when told it may (move), on its own filesystem or, by a copy, from another', async () => {
    const { store, source, dataDir } = await fresh('moved', 'scratch model');
    const sourceIno = (await stat(source)).ino;
    await store.putFile('bucket-b', 'model.onnx', source, { sha256: 'x' }, { move: true });
    const stored = join(dataDir, 'buckets/bucket-b/model.onnx');
    expect((await stat(stored)).ino).toBe(sourceIno);
    expect(await readFile(stored, 'utf8')).toBe('scratch model');
    expect(existsSync(source)).toBe(false);
    expect(await store.stat('bucket-b', 'model.onnx')).toMatchObject({ size: 13, metadata: { sha256: 'x' } });
    // /dev/shm is a tmpfs of its own: the rename fails with EXDEV, and the file is copied in instead.
    const elsewhere = join(await mkdtemp('/dev/shm/heimdall-fs-test-'), 'model.onnx');
    await writeFile(elsewhere, 'from tmpfs');
    await store.putFile('bucket-b', 'other.onnx', elsewhere, {}, { move: true });
    expect(await readFile(join(dataDir, 'buckets/bucket-b/other.onnx'), 'utf8')).toBe('from tmpfs');
    await rm(dirname(elsewhere), { recursive: true, force: true });
  });

  it('still reads the metadata of the older layout (<key>.meta.json beside the object)', async () => {
    const { dataDir } = await fresh('legacy');
    await mkdir(join(dataDir, 'buckets/bucket-b/run'), { recursive: true });
    await writeFile(join(dataDir, 'buckets/bucket-b/run/old.onnx'), 'weights');
    await writeFile(join(dataDir, 'buckets/bucket-b/run/old.onnx.meta.json'), JSON.stringify({ size: 7, etag: 'old-etag', metadata: { sha256: 'abc' } }));
    expect(await new FsObjectStore(dataDir).stat('bucket-b', 'run/old.onnx')).toEqual({ size: 7, etag: 'old-etag', metadata: { sha256: 'abc' } });
  });

  it('lists a bucket in key order (UTF-8 bytes, as S3), under a prefix, with the etags stat gives', async () => {
    const { store, source, dataDir } = await fresh('listing');
    for (const key of ['runs/b.pth', 'runs/a b.pth', 'runs/ü.pth', 'runs/Z.pth', 'runs-old/x.pth', 'other/c.onnx']) await store.putFile('training', key, source);
    // An object of the older layout, with its metadata file beside it (no object of its own).
    await writeFile(join(dataDir, 'buckets/training/runs/legacy.pth'), 'old');
    await writeFile(join(dataDir, 'buckets/training/runs/legacy.pth.meta.json'), JSON.stringify({ size: 3, etag: 'e0', metadata: {} }));
    const listed = [];
    for await (const object of store.list('training', 'runs')) listed.push(object);
    expect(listed.map((o) => o.key)).toEqual(['runs-old/x.pth', 'runs/Z.pth', 'runs/a b.pth', 'runs/b.pth', 'runs/legacy.pth', 'runs/ü.pth']);
    for (const object of listed) expect(object).toMatchObject({ etag: (await store.stat('training', object.key))!.etag, size: (await store.stat('training', object.key))!.size, lastModified: expect.any(Date) });
    const under = [];
    for await (const object of store.list('training', 'runs/')) under.push(object.key);
    expect(under).toHaveLength(5);
    const escaping = [];
    for await (const object of store.list('training', '../')) escaping.push(object.key);
    expect(escaping).toEqual([]);
    await expect(store.list('no-such-bucket')[Symbol.asyncIterator]().next()).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
  });
});
