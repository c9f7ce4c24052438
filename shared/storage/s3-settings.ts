// The S3 store's settings as configuration checks and names them, apart from the store: its `minio`
// client is a large part of the CLI's start-up, and is loaded only where S3 is configured (adapters.ts).

/** Server-side encryption asked for on every upload (S3_SSE, S3_SSE_KMS_KEY_ID). */
export type ServerSideEncryption = { readonly algorithm: 'AES256' } | { readonly algorithm: 'aws:kms'; readonly kmsKeyId: string };
/** `sha256`: each upload request carries `x-amz-checksum-sha256`; `off`: `Content-MD5` only, for servers that refuse the checksum headers. */
export type UploadChecksum = 'sha256' | 'off';

/**
 * Why `endpoint` cannot be an S3_ENDPOINT, or undefined when it can: `http(s)://host[:port]` and
 * nothing more. The S3 protocol addresses buckets from the server's root, so a path would be
 * silently dropped; credentials belong in S3_ACCESS_KEY / S3_SECRET_KEY (the message never
 * repeats them).
 */
export function endpointProblem(endpoint: string): string | undefined {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return 'must be a URL, http(s)://host[:port]';
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `must be an http:// or https:// URL, not ${url.protocol}//`;
  if (url.username || url.password) return 'must not carry credentials: set S3_ACCESS_KEY and S3_SECRET_KEY';
  if (url.pathname !== '/') return `must be http(s)://host[:port] without a path (${url.pathname}): S3 addresses buckets from the root of the server`;
  if (url.search || url.hash || endpoint.includes('?') || endpoint.includes('#')) return 'must be http(s)://host[:port] without a query or fragment';
  return undefined;
}
