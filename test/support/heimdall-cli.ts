import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { RunReport } from '../../shared/pipeline/report.ts';

const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');
/** Fewer timed runs than the default: tests check behaviour, `npm run bench:pipeline` measures. */
const QUICK = { HEIMDALL_BENCHMARK_RUNS: '3', HEIMDALL_BENCHMARK_WARMUP: '1' };

/** `heimdall run <checkpoint> --workdir <workdir> --json` as a user runs it: the real CLI in its own process. */
export async function heimdallRun(checkpoint: string, workdir: string, env: Record<string, string> = {}) {
  const result = await promisify(execFile)(process.execPath, [heimdall, 'run', checkpoint, '--workdir', workdir, '--json'], {
    env: { ...process.env, ...QUICK, ...env },
    maxBuffer: 64 << 20,
  }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => e,
  );
  const lines = result.stdout.trim().split('\n');
  const last = lines.at(-1) ?? '';
  return { code: result.code, stdout: lines, stderr: result.stderr, report: (last.startsWith('{') ? JSON.parse(last) : undefined) as RunReport };
}
