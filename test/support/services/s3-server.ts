/**
 * Real S3-protocol servers for tests (no MinIO server can be installed from the registries this
 * project reaches):
 * - moto's server mode (`moto_server`, from PyPI), the default: IAM enforcement is switched on, so
 *   a wrong key or secret is refused as by MinIO or AWS, and a read-only key is denied its uploads.
 * - LocalStack's S3 (`startLocalStackS3Server`), for what moto does not check: LocalStack verifies
 *   an upload's `x-amz-checksum-sha256` and `Content-MD5` against the bytes received and refuses a
 *   mismatch (BadDigest), as S3 and MinIO do; moto stores the header unchecked. It checks no
 *   credentials (any key is taken) and enforces no bucket policy.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { heimdallCacheDir } from '../oracle.ts';
import { answers, freePort, startService } from './service-process.ts';
import { runServicesPython, SERVICES_DIR, servicesVenvBin } from './venv.ts';

export interface S3Server {
  /** `http://127.0.0.1:<port>`: what S3_ENDPOINT is set to. */
  readonly endpoint: string;
  readonly accessKey: string;
  readonly secretKey: string;
  readonly region: string;
  /** S3_* variables for a `heimdall` process using this server. */
  readonly env: Readonly<Record<string, string>>;
  stop(): Promise<void>;
}

export interface MotoS3Server extends S3Server {
  /** A key whose IAM policy allows reading only (s3:Get*, s3:List*, s3:HeadBucket): uploads with it are AccessDenied. */
  readonly readOnly: { readonly accessKey: string; readonly secretKey: string };
}

export async function startS3Server(): Promise<MotoS3Server> {
  const bin = await servicesVenvBin();
  const dir = await mkdtemp(join(tmpdir(), 'heimdall-s3-server-'));
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const region = 'us-east-1';
  let stopService: (() => Promise<void>) | undefined;
  const stop = async () => {
    await stopService?.();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const service = await startService('moto_server', join(bin, 'moto_server'), ['-H', '127.0.0.1', '-p', String(port)], {
      logFile: join(dir, 'moto.log'),
      ready: () => answers(`${endpoint}/moto-api/`),
      timeoutMs: 60_000,
    });
    stopService = service.stop;
    const { accessKey, secretKey, readOnly } = JSON.parse(await runServicesPython('moto_credentials.py', [endpoint])) as { accessKey: string; secretKey: string; readOnly: { accessKey: string; secretKey: string } };
    const enforce = await fetch(`${endpoint}/moto-api/reset-auth`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '0' });
    if (!enforce.ok) throw new Error(`cannot switch on moto's IAM enforcement: HTTP ${enforce.status}`);
    return {
      endpoint,
      accessKey,
      secretKey,
      region,
      readOnly,
      env: { S3_ENDPOINT: endpoint, S3_ACCESS_KEY: accessKey, S3_SECRET_KEY: secretKey, S3_REGION: region },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

let localstackReady: Promise<string> | undefined;

/** The python of the LocalStack venv, installed by localstack-setup.sh when missing (a fast check once it is there). */
function localstackPython(): Promise<string> {
  localstackReady ??= promisify(execFile)('bash', [join(SERVICES_DIR, 'localstack-setup.sh')], { maxBuffer: 16 << 20 })
    .then(() => join(heimdallCacheDir(), 'localstack-venv', 'bin', 'python'))
    .catch((error: { stderr?: string; message: string }) => {
      localstackReady = undefined;
      throw new Error(`test/support/services/localstack-setup.sh failed: ${error.stderr?.slice(-4000) ?? error.message}`);
    });
  return localstackReady;
}

/** LocalStack's S3 alone, on a free loopback port, its state in a temporary folder. */
export async function startLocalStackS3Server(): Promise<S3Server> {
  const python = await localstackPython();
  const dir = await mkdtemp(join(tmpdir(), 'heimdall-localstack-'));
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const region = 'us-east-1';
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    SERVICES: 's3',
    EAGER_SERVICE_LOADING: '1',
    GATEWAY_LISTEN: `127.0.0.1:${port}`,
    LOCALSTACK_HOST: `127.0.0.1:${port}`,
    // Hypercorn: the default server (twisted) needs a package the pinned venv leaves out.
    GATEWAY_SERVER: 'hypercorn',
    // Nothing leaves the machine: no DNS server (it probes an upstream), no usage events, no certificate download.
    DNS_ADDRESS: '0',
    DISABLE_EVENTS: '1',
    SKIP_SSL_CERT_DOWNLOAD: '1',
    // Host mode, its files under `dir` (in a container it would take /var/lib/localstack).
    OVERRIDE_IN_DOCKER: '0',
    FILESYSTEM_ROOT: dir,
    TMPDIR: dir,
    PYTHONNOUSERSITE: '1',
    PYTHONDONTWRITEBYTECODE: '1',
  };
  let stopService: (() => Promise<void>) | undefined;
  const stop = async () => {
    await stopService?.();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const service = await startService('localstack', python, ['-m', 'localstack.runtime.main'], {
      env,
      cwd: dir,
      logFile: join(dir, 'localstack.log'),
      ready: async () => {
        const response = await fetch(`${endpoint}/_localstack/health`, { signal: AbortSignal.timeout(2_000) });
        const health = (await response.json()) as { services?: Record<string, string> };
        return health.services?.['s3'] === 'running';
      },
      timeoutMs: 120_000,
    });
    stopService = service.stop;
    // LocalStack takes any key: these only make the client sign its requests.
    return { endpoint, accessKey: 'test', secretKey: 'test', region, env: { S3_ENDPOINT: endpoint, S3_ACCESS_KEY: 'test', S3_SECRET_KEY: 'test', S3_REGION: region }, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
