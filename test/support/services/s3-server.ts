/**
 * A real S3-protocol server for tests: moto's server mode (`moto_server`, from PyPI; no MinIO server
 * can be installed from the registries this project reaches). IAM enforcement is switched on, so a
 * wrong key or secret is refused as by MinIO or AWS.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { answers, freePort, startService } from './service-process.ts';
import { runServicesPython, servicesVenvBin } from './venv.ts';

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

export async function startS3Server(): Promise<S3Server> {
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
    const { accessKey, secretKey } = JSON.parse(await runServicesPython('moto_credentials.py', [endpoint])) as { accessKey: string; secretKey: string };
    const enforce = await fetch(`${endpoint}/moto-api/reset-auth`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '0' });
    if (!enforce.ok) throw new Error(`cannot switch on moto's IAM enforcement: HTTP ${enforce.status}`);
    return {
      endpoint,
      accessKey,
      secretKey,
      region,
      env: { S3_ENDPOINT: endpoint, S3_ACCESS_KEY: accessKey, S3_SECRET_KEY: secretKey, S3_REGION: region },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
