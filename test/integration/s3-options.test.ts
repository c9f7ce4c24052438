/**
 * The S3 options on real S3-protocol servers, seen from both ends: what the client sends (a
 * recording proxy in front of the server) and what the server made of it (its own answers).
 * - addressing: path style (the default) and virtual-host style, on moto;
 * - server-side encryption (S3_SSE): the headers on every upload, the encryption moto reports;
 * - checksums (S3_CHECKSUM): `x-amz-checksum-sha256` on every upload request, and a body corrupted
 *   in transit refused by the server, on LocalStack's S3 (moto stores the header unchecked);
 * - a key its policy denies uploads: STORAGE_FORBIDDEN, not STORAGE_AUTH, on moto with IAM on;
 * - metadata values: percent-encoded ASCII on the server, the original read back.
 * A bucket that requires SSE cannot be set up on either server: moto applies a bucket policy's
 * statements without their conditions (moto/s3/models.py, put_bucket_policy: "Conditions are not
 * taken into account"), so a deny unless `s3:x-amz-server-side-encryption` denies every upload, and
 * LocalStack applies no policy. The SSE headers are checked where they arrive instead.
 */
import { createHash, randomBytes } from 'node:crypto';
import { lookup } from 'node:dns';
import { writeFile } from 'node:fs/promises';
import { Agent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { join } from 'node:path';
import { Client } from 'minio';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import { isRetriable } from '../../shared/errors/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { S3ObjectStore, type S3Options } from '../../shared/storage/s3.ts';
import { startHttpProxy, type HttpProxy, type RecordedRequest } from '../support/services/http-proxy.ts';
import { startLocalStackS3Server, startS3Server, type MotoS3Server, type S3Server } from '../support/services/s3-server.ts';
import { tempDir } from '../support/temp.ts';

const MiB = 1 << 20;
const PART = 5 * MiB;
const FAST_RETRY = { attempts: 3, baseDelayMs: 10, maxDelayMs: 50 };
const BUCKET = 'heimdall-models';

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest();

const dir = await tempDir('heimdall-s3-options-');
/** A file of `bytes` random bytes. */
async function fixture(name: string, bytes: number) {
  const content = randomBytes(bytes);
  const path = join(dir, name);
  await writeFile(path, content);
  return { path, content, sha256: sha256(content) };
}
const ready = await fixture('ready', 1);
/** One PUT. */
const small = await fixture('small.onnx', 100_000);
/** Three parts. */
const large = await fixture('large.onnx', 2 * PART + 12_345);

let moto: MotoS3Server;
let localstack: S3Server;

beforeAll(async () => {
  [moto, localstack] = await Promise.all([startS3Server(), startLocalStackS3Server()]);
  // The bucket exists before the tests: the requests they record are their uploads'.
  await Promise.all([moto, localstack].map((server) => storeOn(server).putFile(BUCKET, 'ready', ready.path)));
});
afterAll(async () => {
  await Promise.all([moto?.stop(), localstack?.stop()]);
});

function storeOn(server: S3Server, options: Partial<S3Options> = {}): S3ObjectStore {
  return new S3ObjectStore({ endpoint: server.endpoint, accessKey: server.accessKey, secretKey: server.secretKey, region: server.region, partSize: PART, retry: FAST_RETRY, ...options });
}

/** The minio client on its own, path style: how another program sees what we stored. */
function rawClient(server: S3Server): Client {
  const url = new URL(server.endpoint);
  return new Client({ endPoint: url.hostname, port: Number(url.port), useSSL: false, accessKey: server.accessKey, secretKey: server.secretKey, region: server.region, pathStyle: true });
}

/** A proxy in front of `server`, stopped after `use`. */
async function through<T>(server: S3Server, use: (proxy: HttpProxy) => Promise<T>): Promise<T> {
  const proxy = await startHttpProxy(server.endpoint);
  try {
    return await use(proxy);
  } finally {
    await proxy.stop();
  }
}

const uploads = (proxy: HttpProxy) => proxy.received.filter((r) => r.method === 'PUT' || r.method === 'POST');
const isPart = (r: RecordedRequest) => /[?&]partNumber=/.test(r.path);
const isCreate = (r: RecordedRequest) => r.method === 'POST' && /[?&]uploads(=|&|$)/.test(r.path);
const base64 = (bytes: Buffer) => bytes.toString('base64');

describe('bucket addressing', () => {
  it('puts the bucket in the path by default', async () => {
    await through(moto, async (proxy) => {
      const store = storeOn(moto, { endpoint: proxy.url });
      await store.putFile(BUCKET, 'path-style/model.onnx', small.path);
      const [put] = uploads(proxy);
      expect(put).toMatchObject({ method: 'PUT', path: `/${BUCKET}/path-style/model.onnx`, headers: { host: new URL(proxy.url).host } });
    });
  });

  it('puts the bucket in the Host with S3_FORCE_PATH_STYLE=false, and the server files it under that bucket', async () => {
    // `<bucket>.localhost` resolves to loopback by RFC 6761, but not by this machine's resolver
    // (glibc without systemd-resolved): the test's agent answers for it, as DNS would for a real S3 host.
    const loopback = new Agent({
      keepAlive: true,
      lookup: ((hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
        if (!hostname.endsWith('.localhost')) return lookup(hostname, options, callback as never);
        return options.all ? callback(null, [{ address: '127.0.0.1', family: 4 }]) : callback(null, '127.0.0.1', 4);
      }) as never,
    });
    const bucket = 'virtual-host-models';
    try {
      await through(moto, async (proxy) => {
        const port = new URL(proxy.url).port;
        const store = storeOn(moto, { endpoint: `http://localhost:${port}`, forcePathStyle: false, transportAgent: loopback });
        await store.putFile(bucket, 'models/small.onnx', small.path, { sha256: small.sha256.toString('hex') });
        await store.putFile(bucket, 'models/large.onnx', large.path, { sha256: large.sha256.toString('hex') });
        const fetched = await store.fetchFile(bucket, 'models/large.onnx');
        expect(fetched.sha256).toBe(large.sha256.toString('hex'));
        await fetched.release();

        // Every request named the bucket in its Host, none in its path: bucket check and creation, PUT, multipart, GET.
        expect(proxy.received.length).toBeGreaterThanOrEqual(8);
        for (const request of proxy.received) {
          expect(request.headers.host, `${request.method} ${request.path}`).toBe(`${bucket}.localhost:${port}`);
          expect(request.path.startsWith(`/${bucket}`), request.path).toBe(false);
        }
        expect(uploads(proxy).map((r) => `${r.method} ${r.path.split('?')[0]}`)).toEqual(expect.arrayContaining(['PUT /models/small.onnx', 'POST /models/large.onnx', 'PUT /models/large.onnx']));
      });
    } finally {
      loopback.destroy();
    }
    // moto took the bucket from the Host: a path-style client finds the objects there.
    const stored = await rawClient(moto).statObject(bucket, 'models/small.onnx');
    expect(stored.size).toBe(100_000);
  });
});

describe('server-side encryption', () => {
  const encryptionOf = async (key: string) => {
    const { metaData } = await rawClient(moto).statObject(BUCKET, key);
    return { algorithm: metaData['x-amz-server-side-encryption'], kmsKeyId: metaData['x-amz-server-side-encryption-aws-kms-key-id'] };
  };

  it('asks for SSE-S3 on the PUT and on the multipart creation, and the server encrypts both objects', async () => {
    await through(moto, async (proxy) => {
      const store = storeOn(moto, { endpoint: proxy.url, sse: { algorithm: 'AES256' } });
      await store.putFile(BUCKET, 'sse-s3/small.onnx', small.path);
      await store.putFile(BUCKET, 'sse-s3/large.onnx', large.path);
      const [put, create, ...parts] = uploads(proxy);
      expect(put!.headers['x-amz-server-side-encryption']).toBe('AES256');
      expect(isCreate(create!)).toBe(true);
      expect(create!.headers['x-amz-server-side-encryption']).toBe('AES256');
      // Parts carry no SSE header (S3 refuses one there); the completion neither.
      expect(parts.filter(isPart)).toHaveLength(3);
      for (const part of parts) expect(part.headers['x-amz-server-side-encryption']).toBeUndefined();
    });
    expect(await encryptionOf('sse-s3/small.onnx')).toEqual({ algorithm: 'AES256', kmsKeyId: undefined });
    expect(await encryptionOf('sse-s3/large.onnx')).toEqual({ algorithm: 'AES256', kmsKeyId: undefined });
  });

  it('asks for SSE-KMS with its key id, configured by S3_SSE and S3_SSE_KMS_KEY_ID', async () => {
    const kmsKeyId = 'arn:aws:kms:us-east-1:123456789012:key/heimdall-models';
    await through(moto, async (proxy) => {
      // From the environment, as `heimdall` builds its store.
      const config = loadConfig({ ...moto.env, S3_ENDPOINT: proxy.url, S3_SSE: 'aws:kms', S3_SSE_KMS_KEY_ID: kmsKeyId });
      const { store } = await createAdapters(config);
      await store.putFile(BUCKET, 'sse-kms/small.onnx', small.path);
      const [put] = uploads(proxy);
      expect(put!.headers).toMatchObject({ 'x-amz-server-side-encryption': 'aws:kms', 'x-amz-server-side-encryption-aws-kms-key-id': kmsKeyId });
    });
    expect(await encryptionOf('sse-kms/small.onnx')).toEqual({ algorithm: 'aws:kms', kmsKeyId });
  });
});

describe('upload checksums', () => {
  /** The sha256 checksum the server keeps for an object (HEAD with checksum mode on). */
  const checksumOf = async (key: string) => {
    const response = await rawClient(localstack).makeRequestAsync({ method: 'HEAD', bucketName: BUCKET, objectName: key, headers: { 'x-amz-checksum-mode': 'ENABLED' } });
    response.resume();
    return response.headers['x-amz-checksum-sha256'];
  };

  it('sends x-amz-checksum-sha256 of each request body, which the server checks and keeps', async () => {
    await through(localstack, async (proxy) => {
      const store = storeOn(localstack, { endpoint: proxy.url });
      await store.putFile(BUCKET, 'checksum/small.onnx', small.path);
      await store.putFile(BUCKET, 'checksum/large.onnx', large.path);
      const [put, create, ...rest] = uploads(proxy);
      expect(put!.headers['x-amz-checksum-sha256']).toBe(base64(small.sha256));
      expect(create!.headers['x-amz-checksum-algorithm']).toBe('SHA256');
      const parts = rest.filter(isPart);
      expect(parts.map((p) => p.headers['x-amz-checksum-sha256'])).toEqual(
        [0, 1, 2].map((i) => base64(sha256(large.content.subarray(i * PART, Math.min((i + 1) * PART, large.content.length))))),
      );
      for (const request of [put!, ...parts]) expect(request.headers['content-md5']).toBeUndefined();
    });
    // The server stored the sha256 it verified: the object's own, and the composite of the parts'.
    expect(await checksumOf('checksum/small.onnx')).toBe(base64(small.sha256));
    expect(await checksumOf('checksum/large.onnx')).toMatch(/^[A-Za-z0-9+/]{43}=-3$/);
  });

  it('sends it over https too, where the payload goes unsigned and the checksum alone vouches for the body', async () => {
    // LocalStack answers TLS on the same port, with a certificate of its own making.
    const tls = new HttpsAgent({ rejectUnauthorized: false });
    try {
      const store = storeOn(localstack, { endpoint: localstack.endpoint.replace('http:', 'https:'), transportAgent: tls });
      await store.putFile(BUCKET, 'https/small.onnx', small.path);
      await store.putFile(BUCKET, 'https/large.onnx', large.path);
      const fetched = await store.fetchFile(BUCKET, 'https/large.onnx');
      expect(fetched.sha256).toBe(large.sha256.toString('hex'));
      await fetched.release();
    } finally {
      tls.destroy();
    }
    expect(await checksumOf('https/small.onnx')).toBe(base64(small.sha256));
    expect(await checksumOf('https/large.onnx')).toMatch(/^[A-Za-z0-9+/]{43}=-3$/);
  });

  it('gets a body corrupted in transit refused by the server (BadDigest), stores nothing and leaves no parts', async () => {
    const client = rawClient(localstack);
    await through(localstack, async (proxy) => {
      const store = storeOn(localstack, { endpoint: proxy.url });
      proxy.corruptNextBody();
      const single = await store.putFile(BUCKET, 'corrupted/small.onnx', small.path).catch((e: unknown) => e);
      expect(single).toMatchObject({ code: 'STORAGE_REJECTED', message: expect.stringContaining('BadDigest: The SHA256 you specified did not match the calculated checksum') });
      expect(uploads(proxy)).toHaveLength(1); // an answer, not an accident: not retried

      proxy.corruptNextBody();
      const multipart = await store.putFile(BUCKET, 'corrupted/large.onnx', large.path).catch((e: unknown) => e);
      expect(multipart).toMatchObject({ code: 'STORAGE_REJECTED', message: expect.stringMatching(/^cannot upload part 1 of s3:\/\/heimdall-models\/corrupted\/large\.onnx: BadDigest/) });
      expect(proxy.received.at(-1)).toMatchObject({ method: 'DELETE', path: expect.stringMatching(/[?&]uploadId=/) });
    });
    for (const key of ['corrupted/small.onnx', 'corrupted/large.onnx']) await expect(client.statObject(BUCKET, key), key).rejects.toMatchObject({ code: 'NotFound' });
    const pending: unknown[] = [];
    for await (const upload of client.listIncompleteUploads(BUCKET, 'corrupted/', true)) pending.push(upload);
    expect(pending).toEqual([]);
  });

  it('with S3_CHECKSUM=off sends Content-MD5 instead, which the server checks as well', async () => {
    await through(localstack, async (proxy) => {
      const store = storeOn(localstack, { endpoint: proxy.url, checksum: 'off' });
      await store.putFile(BUCKET, 'md5/small.onnx', small.path);
      await store.putFile(BUCKET, 'md5/large.onnx', large.path);
      const [put, create, ...parts] = uploads(proxy);
      expect(put!.headers).toMatchObject({ 'content-md5': createHash('md5').update(small.content).digest('base64') });
      expect(put!.headers['x-amz-checksum-sha256']).toBeUndefined();
      expect(create!.headers['x-amz-checksum-algorithm']).toBeUndefined();
      for (const part of parts.filter(isPart)) expect(Object.keys(part.headers)).toContain('content-md5');

      proxy.corruptNextBody();
      await expect(store.putFile(BUCKET, 'md5/corrupted.onnx', small.path)).rejects.toMatchObject({ code: 'STORAGE_REJECTED', message: expect.stringContaining('BadDigest: The Content-MD5 you specified did not match') });
    });
  });
});

describe('a key its policy denies', () => {
  it('is refused with STORAGE_FORBIDDEN, not as bad credentials, and not retried', async () => {
    await through(moto, async (proxy) => {
      const reader = storeOn(moto, { endpoint: proxy.url, ...moto.readOnly });
      // The key is good: reading is allowed.
      expect(await reader.stat(BUCKET, 'ready')).toMatchObject({ size: 1 });
      const before = proxy.requests;
      const denied = await reader.putFile(BUCKET, 'denied/model.onnx', small.path).catch((e: unknown) => e);
      expect(denied).toMatchObject({ code: 'STORAGE_FORBIDDEN', message: expect.stringContaining(`cannot upload to s3://${BUCKET}/denied/model.onnx: ${new URL(proxy.url).origin} denied it to S3_ACCESS_KEY (AccessDenied`) });
      expect((denied as Error).message).toContain('S3_SSE');
      expect((denied as Error).message).not.toContain(moto.readOnly.secretKey);
      expect(proxy.requests - before).toBe(2); // the bucket check and the PUT, once
      expect(isRetriable('STORAGE_FORBIDDEN')).toBe(false);
    });
  });
});

describe('user metadata', () => {
  it('is stored as percent-encoded ASCII and read back as written', async () => {
    const metadata = { sha256: small.sha256.toString('hex'), 'source-checkpoint': 's3://heimdall-checkpoints/runs/épreuve 3.pth', 'model-type': 'LocalizationNet — tiny 100%' };
    await through(moto, async (proxy) => {
      await storeOn(moto, { endpoint: proxy.url }).putFile(BUCKET, 'metadata/model.onnx', small.path, metadata);
      const [put] = uploads(proxy);
      expect(put!.headers['x-amz-meta-source-checkpoint']).toBe('s3://heimdall-checkpoints/runs/%C3%A9preuve%203.pth');
    });
    // What the server keeps and any other client reads: ASCII, no RFC 2047 encoded word.
    const { metaData } = await rawClient(moto).statObject(BUCKET, 'metadata/model.onnx');
    expect(metaData).toMatchObject({ sha256: metadata.sha256, 'source-checkpoint': 's3://heimdall-checkpoints/runs/%C3%A9preuve%203.pth', 'model-type': 'LocalizationNet%20%E2%80%94%20tiny%20100%25' });
    for (const value of Object.values(metaData)) expect(String(value)).toMatch(/^[\x20-\x7e]*$/);

    const store = storeOn(moto);
    expect((await store.stat(BUCKET, 'metadata/model.onnx'))?.metadata).toEqual(metadata);
    const fetched = await store.fetchFile(BUCKET, 'metadata/model.onnx');
    expect(fetched.sha256).toBe(metadata.sha256);
    await fetched.release();
  });
});
