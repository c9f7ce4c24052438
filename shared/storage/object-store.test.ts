/**
 * The uri an event carries, located in the store that runs: every uri that names no object of
 * this store is INVALID_EVENT (an event's content, never retried), whatever the store's own
 * parser throws for it.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { isRetriable } from '../errors/index.ts';
import { FsObjectStore } from './fs.ts';
import { fetchUri, locateUri, MODELS_BUCKET, type ObjectStore } from './object-store.ts';
import { S3ObjectStore } from './s3.ts';

const dataDir = await tempDir('heimdall-object-store-');
const fs = new FsObjectStore(dataDir);
// Constructing the client connects to nothing: only its uris are used here.
const s3 = new S3ObjectStore({ endpoint: 'http://127.0.0.1:9', accessKey: 'a', secretKey: 'b', region: 'us-east-1' });

function codeOf(store: ObjectStore, uri: string): string {
  try {
    locateUri(store, uri);
    return 'located';
  } catch (error) {
    return (error as { code?: string }).code ?? `plain ${(error as Error).name}`;
  }
}

describe('locateUri', () => {
  it('gives back the bucket and key of a uri the store made', () => {
    expect(locateUri(fs, fs.uri(MODELS_BUCKET, 'models/localization/abc/model.onnx'))).toEqual({ bucket: MODELS_BUCKET, key: 'models/localization/abc/model.onnx' });
    expect(locateUri(s3, 's3://heimdall-checkpoints/runs/a b.pth')).toEqual({ bucket: 'heimdall-checkpoints', key: 'runs/a b.pth' });
  });

  const notOfThisStore: [string, ObjectStore, string][] = [
    ['an s3:// uri on the embedded store', fs, 's3://heimdall-models/models/localization/abc/model.onnx'],
    ['an http:// uri', fs, 'http://example.com/model.onnx'],
    ['a relative path', fs, 'models/localization/abc/model.onnx'],
    ['an absolute path without a scheme', fs, '/tmp/model.onnx'],
    ['an empty string', fs, ''],
    ['a file uri with a host (fileURLToPath throws a TypeError)', fs, 'file://elsewhere/tmp/model.onnx'],
    ['a file uri with an encoded slash (fileURLToPath throws a TypeError)', fs, `${fs.uri(MODELS_BUCKET, 'a')}%2Fb`],
    ['a file outside the store', fs, 'file:///etc/passwd'],
    ['the store root itself', fs, fs.uri(MODELS_BUCKET, 'k').replace(/\/heimdall-models\/k$/, '')],
    ['a file:// uri on S3', s3, 'file:///tmp/model.onnx'],
    ['an s3:// uri without a key', s3, 's3://heimdall-models'],
    ['an s3:// uri with an empty key', s3, 's3://heimdall-models/'],
    ['a relative path on S3', s3, 'heimdall-models/model.onnx'],
  ];
  for (const [what, store, uri] of notOfThisStore) {
    it(`${what}: INVALID_EVENT, not retriable`, () => {
      const code = codeOf(store, uri);
      expect(code).toBe('INVALID_EVENT');
      expect(isRetriable(code as 'INVALID_EVENT')).toBe(false);
    });
  }

  it('names the uri and what this store reads', () => {
    expect(() => locateUri(fs, 's3://heimdall-models/k')).toThrow('the event names "s3://heimdall-models/k", not an object of this store (file:// uris)');
  });
});

describe('fetchUri', () => {
  it('fetches the object a uri names, and refuses a uri of another store before asking it', async () => {
    const source = join(dataDir, 'model.bin');
    await writeFile(source, 'weights');
    await fs.putFile(MODELS_BUCKET, 'models/localization/abc/model.onnx', source);
    const fetched = await fetchUri(fs, fs.uri(MODELS_BUCKET, 'models/localization/abc/model.onnx'));
    expect(fetched.path).toBe(join(dataDir, 'buckets', MODELS_BUCKET, 'models/localization/abc/model.onnx'));
    await fetched.release();
    await expect(fetchUri(fs, 'http://example.com/model.onnx')).rejects.toMatchObject({ code: 'INVALID_EVENT' });
    await expect(fetchUri(fs, fs.uri(MODELS_BUCKET, 'models/localization/none/model.onnx'))).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
  });
});
