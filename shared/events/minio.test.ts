import { describe, expect, it } from 'vitest';
import { isObjectCreated, kindOf, parseNotification, uploadId } from './minio.ts';

const record = (eventName: string, key: string, bucket = 'training', eTag = '"abc"') => ({ eventName, s3: { bucket: { name: bucket }, object: { key, size: 42, eTag } } });

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
  });

  it('refuse what is not a notification, and bucket names that are not S3 names', () => {
    expect(() => parseNotification('not json')).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT' }));
    expect(() => parseNotification('{"EventName":"x"}')).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/Records/) }));
    expect(() => parseNotification(JSON.stringify({ Records: [record('s3:ObjectCreated:Put', 'x.pth', '../../etc')] }))).toThrowError(expect.objectContaining({ code: 'INVALID_EVENT', message: expect.stringMatching(/bucket/) }));
  });
});
