/**
 * `npm run bench:pipeline` (first part): `heimdall run` with default settings on the tiny and large
 * fixtures, each in a fresh data dir, as a user runs it. Prints each stage's time (from the event
 * timestamps) and the end-to-end wall time next to the target: tiny <= 20 s on the 2-core machine.
 * The second part, test/bench/reference.bench.ts, times the reference pass per sample.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { RunReport } from '../../shared/pipeline/report.ts';
import { ensureFixtures, type Variant } from '../support/oracle.ts';

const TINY_TARGET_SECONDS = 20;
const variants = (process.env.BENCH_VARIANTS ?? 'tiny,large').split(',') as Variant[];
const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');
const stages = ['ingest', 'export', 'validate', 'parity', 'benchmark', 'register'];

const lines: string[] = [];
const report: Record<string, unknown> = {};
for (const variant of variants) {
  const checkpoint = (await ensureFixtures(variant)).files.find((f) => f.name === 'full.pth')!.path;
  const workdir = await mkdtemp(join(tmpdir(), 'heimdall-bench-run-'));
  try {
    process.stderr.write(`bench pipeline ${variant}: heimdall run ${checkpoint}\n`);
    const started = Date.now();
    const { stdout } = await promisify(execFile)(process.execPath, [heimdall, 'run', checkpoint, '--workdir', workdir, '--json'], { maxBuffer: 64 << 20 });
    const wall = (Date.now() - started) / 1000;
    const run = JSON.parse(stdout.trim().split('\n').at(-1)!) as RunReport;
    if (run.status !== 'registered') throw new Error(`run failed: ${JSON.stringify(run.error)}`);
    // Each stage ends when its event is published; the first starts when the process does.
    const times = run.events.map((e) => Date.parse(e.time));
    const perStage = Object.fromEntries(stages.map((s, i) => [s, ((times[i]! - (i === 0 ? started : times[i - 1]!)) / 1000)]));
    report[variant] = { wallSeconds: wall, perStageSeconds: perStage, benchmark: run.benchmark?.perBatch };
    lines.push(
      `${variant}: end to end ${wall.toFixed(1)} s` + (variant === 'tiny' ? `   [${wall <= TINY_TARGET_SECONDS ? 'meets target' : 'MISSES target'}: <= ${TINY_TARGET_SECONDS} s]` : ''),
      `  ${stages.map((s) => `${s} ${perStage[s]!.toFixed(1)} s`).join('  ')}  (ingest includes process start-up)`,
    );
  } finally {
    await rm(workdir, { recursive: true, force: true });
  }
}
console.log(lines.join('\n'));
console.log(JSON.stringify(report));
