import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HeimdallError, isRetriable } from '../errors/index.ts';
import { isObjectCreated, kindOf, parseNotification, uploadId } from './minio.ts';

const record = (eventName: string, key: string, bucket = 'training', eTag = '"abc"', versionId?: string) => ({ eventName, s3: { bucket: { name: bucket }, object: { key, size: 42, eTag, ...(versionId !== undefined ? { versionId } : {}) } } });

describe('MinIO notifications', () => {
  it('yield every record with its key URL-decoded and the etag unquoted', () => {
    const body = JSON.stringify({
      EventName: 's3:ObjectCreated:CompleteMultipartUpload',
      Key: 'training/runs%2Fepoch+3.pth',
      Records: [record('s3:ObjectCreated:CompleteMultipartUpload', 'runs%2Fepoch+3.pth'), record('s3:ObjectCreated:Put', 'runs%2F%C3%A9preuve%2B1.ckpt'), record('s3:ObjectRemoved:Delete', 'old.pth')],
    });
    const records = parseNotification(body);
    expect(records.map((r) => [r.key, isObjectCreated(r)])).toEqual([
      ['runs/epoch 3.pth', true],
      ['runs/épreuve+1.ckpt', true],
      ['old.pth', false],
    ]);
    expect(records[0]).toMatchObject({ bucket: 'training', size: 42, etag: 'abc' });
  });

  it('know checkpoints, models, and what to ignore (sidecars included)', () => {
    expect(['a.pt', 'a.PTH', 'a.ckpt', 'a.safetensors', 'a.onnx', 'a.pth.parity.safetensors', 'notes.txt'].map(kindOf)).toEqual(['checkpoint', 'checkpoint', 'checkpoint', 'checkpoint', 'model', 'ignored', 'ignored']);
  });

  it('identify an upload by bucket, key and etag (a re-fired notification is the same upload)', () => {
    const a = { bucket: 'b', key: 'k.pth', etag: 'e1' };
    expect(uploadId(a)).toBe(uploadId({ ...a }));
    expect(uploadId(a)).not.toBe(uploadId({ ...a, etag: 'e2' }));
    // What it was before versions counted: marks already in the KV bucket stay valid.
    expect(uploadId(a)).toBe('d044ebd7ed795f1ae37a85a593b954a1');
    expect(uploadId({ ...a, versionId: '' })).toBe('d044ebd7ed795f1ae37a85a593b954a1');
  });

  it('carry the version a notification names, and count each version as its own upload', () => {
    const [versioned, unversioned] = parseNotification(JSON.stringify({ Records: [record('s3:ObjectCreated:Put', 'k.pth', 'training', '"e1"', 'v-1'), record('s3:ObjectCreated:Put', 'k.pth', 'training', '"e1"', '')] }));
    expect(versioned).toEqual({ eventName: 's3:ObjectCreated:Put', bucket: 'training', key: 'k.pth', size: 42, etag: 'e1', versionId: 'v-1' });
    expect(unversioned).not.toHaveProperty('versionId');
    // Same bytes under two versions share an etag; each version is still announced once.
    expect(uploadId(versioned!)).not.toBe(uploadId({ ...versioned!, versionId: 'v-2' }));
    expect(uploadId(versioned!)).not.toBe(uploadId(unversioned!));
    expect(uploadId(versioned!)).toBe(uploadId({ ...versioned! }));
  });

  it('refuse what is not a notification, and bucket names that are not S3 names', () => {
    expect(() => parseNotification('not json')).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT' }));
    expect(() => parseNotification('{"EventName":"x"}')).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/Records/) }));
    expect(() => parseNotification(JSON.stringify({ Records: [record('s3:ObjectCreated:Put', 'x.pth', '../../etc')] }))).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/bucket/) }));
  });
});

describe('MinIO notifications that are not: INVALID_EVENT, not retriable, never a crash', () => {
  const cases: [string, string, RegExp][] = [
    ['an empty body', '', /not JSON/],
    ['JSON null', 'null', /not a bucket notification/],
    ['an array', '[]', /not a bucket notification/],
    ['no records', '{"Records":[]}', /Records/],
    ['a record without s3', '{"Records":[{"eventName":"s3:ObjectCreated:Put"}]}', /Records\.0\.s3/],
    ['a size that is not a count', JSON.stringify({ Records: [{ ...record('s3:ObjectCreated:Put', 'k.pth'), s3: { bucket: { name: 'training' }, object: { key: 'k.pth', size: -1 } } }] }), /size/],
    ['a key that is not URL-escaped UTF-8', JSON.stringify({ Records: [record('s3:ObjectCreated:Put', 'runs%2F%C3.pth')] }), /object key runs%2F%C3\.pth is not URL-escaped/],
    ['an empty key', JSON.stringify({ Records: [record('s3:ObjectCreated:Put', '')] }), /key/],
    ['a bucket that climbs out', JSON.stringify({ Records: [record('s3:ObjectCreated:Put', 'k.pth', '..')] }), /bucket/],
    ['a version id that is a number', JSON.stringify({ Records: [{ eventName: 'x', s3: { bucket: { name: 'training' }, object: { key: 'k', versionId: 3 } } }] }), /versionId/],
  ];
  for (const [what, body, reason] of cases) {
    it(what, () => {
      let error: unknown;
      try {
        parseNotification(body);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(HeimdallError);
      expect({ code: (error as HeimdallError).code, retriable: isRetriable((error as HeimdallError).code) }).toEqual({ code: 'INVALID_EVENT', retriable: false });
      expect((error as HeimdallError).message).toMatch(reason);
    });
  }

  it('any body: records or INVALID_EVENT', () => {
    const object = fc.record({ key: fc.oneof(fc.string(), fc.constantFrom('%', '%E0%A4', '+', '%2F')), size: fc.oneof(fc.integer(), fc.double(), fc.string()), eTag: fc.oneof(fc.string(), fc.integer()), versionId: fc.oneof(fc.string(), fc.integer(), fc.constant(null)) }, { requiredKeys: [] });
    const notification = fc.record({ Records: fc.array(fc.record({ eventName: fc.oneof(fc.string(), fc.constant('s3:ObjectCreated:Put')), s3: fc.record({ bucket: fc.record({ name: fc.oneof(fc.string(), fc.constant('training')) }), object }, { requiredKeys: [] }) }, { requiredKeys: [] })) }, { requiredKeys: [] });
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), notification.map((n) => JSON.stringify(n))), (body) => {
        try {
          for (const r of parseNotification(body)) expect(typeof r.key).toBe('string');
        } catch (error) {
          if (!(error instanceof HeimdallError) || error.code !== 'INVALID_EVENT') throw error;
        }
      }),
      { numRuns: 2000 },
    );
  });
});
