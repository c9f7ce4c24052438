import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { heimdallCacheDir } from '../oracle.ts';

/** test/support/services/, where setup.sh and the Python helpers live. */
export const SERVICES_DIR = fileURLToPath(new URL('./', import.meta.url));

let ready: Promise<string> | undefined;

/**
 * The bin/ folder of the services venv (mlflow, moto_server, python), installed by setup.sh when
 * missing (`npm run setup` does it ahead of time; here it is a fast check).
 */
export function servicesVenvBin(): Promise<string> {
  ready ??= promisify(execFile)('bash', [join(SERVICES_DIR, 'setup.sh')], { maxBuffer: 16 << 20 })
    .then(() => join(heimdallCacheDir(), 'services-venv', 'bin'))
    .catch((error: { stderr?: string; message: string }) => {
      ready = undefined;
      throw new Error(`test/support/services/setup.sh failed: ${error.stderr?.slice(-4000) ?? error.message}`);
    });
  return ready;
}

/** Runs a Python helper from this folder with the services venv; its stdout. */
export async function runServicesPython(script: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const bin = await servicesVenvBin();
  const { stdout } = await promisify(execFile)(join(bin, 'python'), [join(SERVICES_DIR, script), ...args], {
    env: { ...process.env, ...env, PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1' },
    maxBuffer: 64 << 20,
  }).catch((error: { stderr?: string; message: string }) => {
    throw new Error(`${script} failed: ${error.stderr?.slice(-4000) ?? error.message}`);
  });
  return stdout;
}
