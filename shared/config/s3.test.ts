/**
 * The S3 part of the configuration: addressing style, server-side encryption and checksum
 * settings, and an endpoint that is only `http(s)://host[:port]`, refused at start-up otherwise
 * with a message naming the variable.
 */
import { describe, expect, it } from 'vitest';
import { refusal } from './refusal.test-helper.ts';
import { loadConfig } from './index.ts';

const S3 = { S3_ENDPOINT: 'http://minio.internal:9000', S3_ACCESS_KEY: 'heimdall', S3_SECRET_KEY: 'secret-key-1234' };

/** The message loadConfig refuses `env` with (USAGE), or undefined when it takes it. */
describe('S3 configuration', () => {
  it('defaults to path-style addressing, sha256 checksums and no server-side encryption', () => {
    expect(loadConfig(S3).s3).toEqual({ endpoint: 'http://minio.internal:9000', accessKey: 'heimdall', secretKey: 'secret-key-1234', region: 'us-east-1', forcePathStyle: true, checksum: 'sha256' });
    expect(loadConfig({}).s3).toBeUndefined();
  });

  it('takes virtual-host addressing with S3_FORCE_PATH_STYLE=false', () => {
    expect(loadConfig({ ...S3, S3_FORCE_PATH_STYLE: 'false' }).s3?.forcePathStyle).toBe(false);
    expect(loadConfig({ ...S3, S3_FORCE_PATH_STYLE: 'true' }).s3?.forcePathStyle).toBe(true);
    expect(refusal({ ...S3, S3_FORCE_PATH_STYLE: 'yes' })).toBe('invalid configuration: S3_FORCE_PATH_STYLE: must be true or false');
  });

  it('accepts an endpoint that is a scheme, a host and a port, with or without the final slash', () => {
    for (const endpoint of ['http://minio.internal:9000', 'https://s3.eu-central-1.amazonaws.com/', 'http://[::1]:9000', 'http://127.0.0.1:9000/']) {
      expect(loadConfig({ ...S3, S3_ENDPOINT: endpoint }).s3?.endpoint, endpoint).toBe(endpoint);
    }
  });

  it('refuses an endpoint with a path, a query or credentials, naming S3_ENDPOINT and never the secret', () => {
    expect(refusal({ ...S3, S3_ENDPOINT: 'http://host:9000/minio' })).toBe(
      'invalid configuration: S3_ENDPOINT: must be http(s)://host[:port] without a path (/minio): S3 addresses buckets from the root of the server',
    );
    expect(refusal({ ...S3, S3_ENDPOINT: 'http://host:9000/minio/' })).toMatch(/^invalid configuration: S3_ENDPOINT: .*without a path \(\/minio\/\)/);
    expect(refusal({ ...S3, S3_ENDPOINT: 'http://host:9000?region=eu' })).toBe('invalid configuration: S3_ENDPOINT: must be http(s)://host[:port] without a query or fragment');
    expect(refusal({ ...S3, S3_ENDPOINT: 'http://host:9000/?' })).toBe('invalid configuration: S3_ENDPOINT: must be http(s)://host[:port] without a query or fragment');
    expect(refusal({ ...S3, S3_ENDPOINT: 'http://heimdall:hunter2-secret@host:9000' })).toBe('invalid configuration: S3_ENDPOINT: must not carry credentials: set S3_ACCESS_KEY and S3_SECRET_KEY');
    expect(refusal({ ...S3, S3_ENDPOINT: 'ftp://host:21' })).toBe('invalid configuration: S3_ENDPOINT: must be an http:// or https:// URL, not ftp://');
    expect(refusal({ ...S3, S3_ENDPOINT: 'minio:9000' })).toMatch(/^invalid configuration: S3_ENDPOINT: must be an http:\/\/ or https:\/\/ URL/);
    expect(refusal({ ...S3, S3_ENDPOINT: 'not a url' })).toBe('invalid configuration: S3_ENDPOINT: must be a URL, http(s)://host[:port]');
  });

  it('asks for SSE-S3 or SSE-KMS, the KMS key id required with aws:kms and refused without it', () => {
    expect(loadConfig({ ...S3, S3_SSE: 'AES256' }).s3?.sse).toEqual({ algorithm: 'AES256' });
    expect(loadConfig({ ...S3, S3_SSE: 'aws:kms', S3_SSE_KMS_KEY_ID: 'alias/heimdall-models' }).s3?.sse).toEqual({ algorithm: 'aws:kms', kmsKeyId: 'alias/heimdall-models' });
    expect(refusal({ ...S3, S3_SSE: 'aws:kms' })).toBe('invalid configuration: S3_SSE_KMS_KEY_ID: is required with S3_SSE=aws:kms');
    expect(refusal({ ...S3, S3_SSE: 'AES256', S3_SSE_KMS_KEY_ID: 'alias/heimdall-models' })).toBe('invalid configuration: S3_SSE_KMS_KEY_ID: applies only with S3_SSE=aws:kms');
    expect(refusal({ ...S3, S3_SSE_KMS_KEY_ID: 'alias/heimdall-models' })).toBe('invalid configuration: S3_SSE_KMS_KEY_ID: applies only with S3_SSE=aws:kms');
    expect(refusal({ ...S3, S3_SSE: 'aws:kms:dsse' })).toBe('invalid configuration: S3_SSE: must be AES256 or aws:kms');
  });

  it('sends sha256 checksums unless S3_CHECKSUM=off', () => {
    expect(loadConfig({ ...S3, S3_CHECKSUM: 'off' }).s3?.checksum).toBe('off');
    expect(loadConfig({ ...S3, S3_CHECKSUM: 'sha256' }).s3?.checksum).toBe('sha256');
    expect(refusal({ ...S3, S3_CHECKSUM: 'crc32' })).toBe('invalid configuration: S3_CHECKSUM: must be sha256 or off');
  });
});
