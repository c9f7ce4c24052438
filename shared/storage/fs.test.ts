import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { FsObjectStore } from './fs.ts';

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});

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
});
