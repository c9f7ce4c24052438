/**
 * A real MLflow tracking server for tests: SQLite backend, proxied artifacts (`--serve-artifacts`)
 * in a temporary folder, and MLflow's basic-auth app, so that credentials are checked as on a
 * production server. The admin user and its password are made up per start.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { answers, freePort, startService } from './service-process.ts';
import { servicesVenvBin } from './venv.ts';

export interface MlflowServer {
  /** `http://127.0.0.1:<port>`: what MLFLOW_TRACKING_URI is set to. */
  readonly url: string;
  readonly username: string;
  readonly password: string;
  /** MLFLOW_* variables for a `heimdall` process or a Python MLflow client using this server. */
  readonly env: Readonly<Record<string, string>>;
  stop(): Promise<void>;
}

/** Keeps MLflow from trying to reach its telemetry service (there is no network here). */
export const MLFLOW_OFFLINE_ENV = { MLFLOW_DISABLE_TELEMETRY: 'true', DO_NOT_TRACK: 'true' };

export async function startMlflowServer(): Promise<MlflowServer> {
  const bin = await servicesVenvBin();
  const dir = await mkdtemp(join(tmpdir(), 'heimdall-mlflow-server-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const username = 'heimdall';
  const password = randomBytes(12).toString('hex'); // basic-auth wants at least 12 characters
  await writeFile(
    join(dir, 'auth.ini'),
    ['[mlflow]', 'default_permission = READ', `database_uri = sqlite:///${join(dir, 'auth.db')}`, `admin_username = ${username}`, `admin_password = ${password}`, 'authorization_function = mlflow.server.auth:authenticate_request_basic_auth', '# Checks a password once a minute, not on every request (each check costs about 0.3 s of CPU here).', 'auth_cache_ttl_seconds = 60', ''].join('\n'),
  );
  try {
    const service = await startService(
      'mlflow server',
      join(bin, 'mlflow'),
      ['server', '--app-name', 'basic-auth', '--backend-store-uri', `sqlite:///${join(dir, 'mlflow.db')}`, '--serve-artifacts', '--artifacts-destination', join(dir, 'artifacts'), '--host', '127.0.0.1', '--port', String(port), '--workers', '1'],
      {
        env: { ...process.env, ...MLFLOW_OFFLINE_ENV, MLFLOW_AUTH_CONFIG_PATH: join(dir, 'auth.ini'), MLFLOW_FLASK_SERVER_SECRET_KEY: randomBytes(16).toString('hex') },
        cwd: dir,
        logFile: join(dir, 'mlflow.log'),
        // /health answers without credentials once the app is up.
        ready: () => answers(`${url}/health`),
        // Database migrations and imports take 20-40 s on a busy 2-core machine.
        timeoutMs: 240_000,
      },
    );
    return {
      url,
      username,
      password,
      env: { MLFLOW_TRACKING_URI: url, MLFLOW_TRACKING_USERNAME: username, MLFLOW_TRACKING_PASSWORD: password },
      async stop() {
        await service.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}
