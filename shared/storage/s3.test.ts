/**
 * The S3 ObjectStore against a real S3-protocol server (moto, with IAM enforcement on): uploads
 * with user metadata, multipart, streaming downloads with their sha256, and the failures a user
 * meets — a missing object, wrong credentials, a server answering 503 for a while.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHttpProxy } from '../../test/support/services/http-proxy.ts';
import { startS3Server, type S3Server } from '../../test/support/services/s3-server.ts';
import { tempDir } from '../../test/support/temp.ts';
import { Client } from 'minio';
import { encodeMetadataValue, S3ObjectStore, type S3Options } from './s3.ts';

const MiB = 1 << 20;
/** Short waits: these tests check that retries happen, not how long they wait. */
const FAST_RETRY = { attempts: 5, baseDelayMs: 10, maxDelayMs: 50 };

const dir = await tempDir('heimdall-s3-test-');
let server: S3Server;
let options: S3Options;
let store: S3ObjectStore;

async function randomFile(name: string, bytes: number): Promise<{ path: string; sha256: string }> {
  const content = randomBytes(bytes);
  const path = join(dir, name);
  await writeFile(path, content);
  return { path, sha256: createHash('sha256').update(content).digest('hex') };
}

beforeAll(async () => {
  server = await startS3Server();
  options = { endpoint: server.endpoint, accessKey: server.accessKey, secretKey: server.secretKey, region: server.region, partSize: 5 * MiB, retry: FAST_RETRY };
  store = new S3ObjectStore(options);
});
afterAll(() => server?.stop());

describe('S3ObjectStore on a real S3-protocol server', () => {
  it('names objects s3://bucket/key and parses those uris back', () => {
    expect(store.uri('heimdall-models', 'models/localization/abc/model.onnx')).toBe('s3://heimdall-models/models/localization/abc/model.onnx');
    expect(store.parseUri('s3://heimdall-models/models/localization/abc/model.onnx')).toEqual({ bucket: 'heimdall-models', key: 'models/localization/abc/model.onnx' });
    for (const uri of ['file:///tmp/x', 's3://heimdall-models', 's3://heimdall-models/', 'http://heimdall-models/k', '']) {
      expect(() => store.parseUri(uri), uri).toThrow(expect.objectContaining({ code: 'INVALID_EVENT' }));
    }
  });

  it('uploads a file with user metadata into a bucket it creates, and downloads it with its sha256', async () => {
    const file = await randomFile('model.onnx', 3 * MiB + 7);
    const metadata = { sha256: file.sha256, 'run-id': '0123456789abcdef', 'source-checkpoint': 's3://heimdall-checkpoints/run/Prüfung 1.pth', opset: '14' };
    const put = await store.putFile('fresh-bucket', 'models/localization/run/model.onnx', file.path, metadata);
    expect(put).toMatchObject({ size: 3 * MiB + 7, metadata });
    expect(await store.stat('fresh-bucket', 'models/localization/run/model.onnx')).toEqual({ size: 3 * MiB + 7, etag: put.etag, metadata });

    const fetched = await store.fetchFile('fresh-bucket', 'models/localization/run/model.onnx');
    expect(fetched).toMatchObject({ size: 3 * MiB + 7, sha256: file.sha256 });
    expect(fetched.path.endsWith('/model.onnx')).toBe(true);
    expect(createHash('sha256').update(await readFile(fetched.path)).digest('hex')).toBe(file.sha256);
    await fetched.release();
    await expect(stat(fetched.path)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('sends files larger than the part size as multipart uploads', async () => {
    const file = await randomFile('checkpoint.pth', 12 * MiB);
    const put = await store.putFile('heimdall-checkpoints', 'run/checkpoint.pth', file.path, { sha256: file.sha256 });
    // S3 gives a multipart object the etag `<md5 of the part md5s>-<parts>`.
    expect(put.etag).toMatch(/^[0-9a-f]{32}-3$/);
    const fetched = await store.fetchFile('heimdall-checkpoints', 'run/checkpoint.pth');
    expect(fetched.sha256).toBe(file.sha256);
    await fetched.release();
  });

  it('takes a multipart completion answered 200 with an error as the error it is: tried again when transient, else aborted', async () => {
    const file = await randomFile('completion.bin', 11 * MiB);
    const proxy = await startHttpProxy(server.endpoint);
    try {
      const proxied = new S3ObjectStore({ ...options, endpoint: proxy.url });
      const isCompletion = (r: { method: string; path: string }) => r.method === 'POST' && /[?&]uploadId=/.test(r.path);
      // S3 documents this: a completion can fail after its 200 status is sent, the error in the body.
      proxy.answerNext(isCompletion, 200, '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>');
      const put = await proxied.putFile('heimdall-checkpoints', 'run/completion.bin', file.path, { sha256: file.sha256 });
      expect(put.etag).toMatch(/^[0-9a-f]{32}-3$/);
      expect(proxy.received.filter(isCompletion)).toHaveLength(2);

      proxy.answerNext(isCompletion, 200, '<Error><Code>InvalidPart</Code><Message>One or more of the specified parts could not be found.</Message></Error>');
      await expect(proxied.putFile('heimdall-checkpoints', 'run/incomplete.bin', file.path)).rejects.toMatchObject({ code: 'STORAGE_REJECTED', message: expect.stringContaining('InvalidPart: One or more of the specified parts could not be found') });
      expect(proxy.received.at(-1)).toMatchObject({ method: 'DELETE', path: expect.stringMatching(/^\/heimdall-checkpoints\/run\/incomplete\.bin\?uploadId=/) });
      expect(await store.stat('heimdall-checkpoints', 'run/incomplete.bin')).toBeUndefined();
    } finally {
      await proxy.stop();
    }
  });

  it('refuses an endpoint that is more than a scheme, a host and a port', () => {
    expect(() => new S3ObjectStore({ ...options, endpoint: `${server.endpoint}/minio` })).toThrow(expect.objectContaining({ code: 'USAGE', message: expect.stringContaining('without a path (/minio)') }));
  });

  it('percent-encodes the metadata bytes a header cannot carry, and % itself, keeping the rest readable', () => {
    expect(encodeMetadataValue('s3://heimdall-checkpoints/run/x.pth')).toBe('s3://heimdall-checkpoints/run/x.pth');
    expect(encodeMetadataValue('100% sûr\tpour 😀')).toBe('100%25%20s%C3%BBr%09pour%20%F0%9F%98%80');
    expect(decodeURIComponent(encodeMetadataValue('100% sûr\tpour 😀'))).toBe('100% sûr\tpour 😀');
  });

  it('refuses a download whose bytes do not match the sha256 in the metadata', async () => {
    const file = await randomFile('tampered.bin', 1000);
    await store.putFile('heimdall-checkpoints', 'run/tampered.bin', file.path, { sha256: '0'.repeat(64) });
    await expect(store.fetchFile('heimdall-checkpoints', 'run/tampered.bin')).rejects.toMatchObject({ code: 'IO_ERROR', message: expect.stringContaining(`has sha256 ${file.sha256}`) });
  });

  it('reports a missing object as absent, and fetching it as OBJECT_NOT_FOUND at once', async () => {
    const proxy = await startHttpProxy(server.endpoint);
    const counted = new S3ObjectStore({ ...options, endpoint: proxy.url });
    try {
      expect(await counted.stat('heimdall-checkpoints', 'no/such.pth')).toBeUndefined();
      await expect(counted.fetchFile('heimdall-checkpoints', 'no/such.pth')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
      await expect(counted.fetchFile('no-such-bucket', 'x.pth')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
      expect(proxy.requests).toBe(3); // one request each: a 404 is an answer, not retried
    } finally {
      await proxy.stop();
    }
  });

  it('refuses wrong credentials with STORAGE_AUTH, without retrying and without the secret in the message', async () => {
    const proxy = await startHttpProxy(server.endpoint);
    try {
      const wrongSecret = new S3ObjectStore({ ...options, endpoint: proxy.url, secretKey: 'not-the-secret-key' });
      const file = await randomFile('auth.bin', 100);
      const error = await wrongSecret.putFile('heimdall-models', 'auth.bin', file.path).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'STORAGE_AUTH', message: expect.stringContaining('S3_ACCESS_KEY / S3_SECRET_KEY') });
      expect((error as Error).message).not.toContain('not-the-secret-key');
      expect(proxy.requests).toBe(1);

      const unknownKey = new S3ObjectStore({ ...options, accessKey: 'AKIAUNKNOWN0000000000' });
      await expect(unknownKey.fetchFile('heimdall-checkpoints', 'run/checkpoint.pth')).rejects.toMatchObject({ code: 'STORAGE_AUTH' });
    } finally {
      await proxy.stop();
    }
  });

  it('retries while the server answers 503, then succeeds', async () => {
    const proxy = await startHttpProxy(server.endpoint);
    try {
      const flaky = new S3ObjectStore({ ...options, endpoint: proxy.url });
      const file = await randomFile('flaky.bin', 2000);
      proxy.failNext(3);
      await flaky.putFile('heimdall-models', 'flaky.bin', file.path, { sha256: file.sha256 });
      proxy.failNext(2);
      const fetched = await flaky.fetchFile('heimdall-models', 'flaky.bin');
      expect(fetched.sha256).toBe(file.sha256);
      await fetched.release();
      expect(proxy.requests).toBeGreaterThanOrEqual(3 + 2 + 3); // failures, bucket check, put, get

      proxy.failNext(FAST_RETRY.attempts);
      await expect(flaky.stat('heimdall-models', 'flaky.bin')).rejects.toMatchObject({ code: 'IO_ERROR' });
    } finally {
      await proxy.stop();
    }
  });

  describe('in a versioned bucket', () => {
    const bucket = 'versioned-checkpoints';
    const key = 'runs/epoch-3.pth';
    let client: Client;
    let v1: { versionId: string; etag: string; sha256: string };
    let v2: { versionId: string; etag: string; sha256: string };

    /** Uploads through the minio client itself, which reports the version id S3 gave the upload. */
    async function upload(name: string): Promise<{ versionId: string; etag: string; sha256: string }> {
      const file = await randomFile(name, 4096);
      const { etag, versionId } = await client.fPutObject(bucket, key, file.path);
      return { versionId: versionId!, etag, sha256: file.sha256 };
    }

    beforeAll(async () => {
      const url = new URL(server.endpoint);
      client = new Client({ endPoint: url.hostname, port: Number(url.port), useSSL: false, accessKey: server.accessKey, secretKey: server.secretKey, region: server.region, pathStyle: true });
      await client.makeBucket(bucket, server.region);
      await client.setBucketVersioning(bucket, { Status: 'Enabled' });
      v1 = await upload('v1.pth');
      v2 = await upload('v2.pth');
    });

    const sha256Of = async (version?: { versionId?: string; etag?: string }) => {
      const fetched = await store.fetchFile(bucket, key, version);
      await fetched.release();
      return fetched.sha256;
    };

    it('reads the version asked for, the latest without one', async () => {
      expect(v1.versionId).not.toBe(v2.versionId);
      expect(await sha256Of({ versionId: v1.versionId })).toBe(v1.sha256);
      expect(await sha256Of({ versionId: v2.versionId, etag: v2.etag })).toBe(v2.sha256);
      expect(await sha256Of()).toBe(v2.sha256);
    });

    it('checks the etag a notification names, quoted or not', async () => {
      expect(await sha256Of({ versionId: v1.versionId, etag: `"${v1.etag}"` })).toBe(v1.sha256);
      // No version id (a notification from an unversioned bucket): the key holds v2 now, not the upload named.
      await expect(store.fetchFile(bucket, key, { etag: v1.etag })).rejects.toMatchObject({
        code: 'OBJECT_NOT_FOUND',
        message: `s3://${bucket}/${key} has etag ${v2.etag}, not ${v1.etag} as the notification named: that upload was replaced`,
      });
      await expect(store.fetchFile(bucket, key, { versionId: v2.versionId, etag: v1.etag })).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND', message: expect.stringContaining(`(version ${v2.versionId}) has etag ${v2.etag}, not ${v1.etag}`) });
    });

    it('answers a version that does not exist with OBJECT_NOT_FOUND at once, in a versioned bucket or not', async () => {
      const proxy = await startHttpProxy(server.endpoint);
      const counted = new S3ObjectStore({ ...options, endpoint: proxy.url });
      try {
        await expect(counted.fetchFile(bucket, key, { versionId: '00000000-0000-0000-0000-000000000000' })).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND', message: expect.stringContaining('NoSuchVersion') });
        await expect(counted.fetchFile('heimdall-checkpoints', 'run/checkpoint.pth', { versionId: v1.versionId })).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
        expect(proxy.requests).toBe(2);
      } finally {
        await proxy.stop();
      }
    });
  });
});
