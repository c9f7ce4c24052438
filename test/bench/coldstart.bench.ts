/**
 * `npm run bench:coldstart` (issue 14 item 3): how fast a fresh process goes from its start to its
 * first inference on the large model, for our graph and for torch.onnx.export's graph of the same
 * weights, measured in the same run. Ours is exported from the large fixture's full.pth as the export
 * stage stores it and the registries serve it (model.onnx, its weights in model.onnx.data: onnxruntime
 * maps them instead of copying them out of the protobuf; MLflow and onnx load it as the file
 * `mlflow.onnx.log_model` saves by default), and once more with its weights inline (for comparison).
 * torch's comes from bare.pt, the same weights without the trainer's config (test/bench/torch_export.py).
 *
 * Each round starts one fresh Node process per model (test/bench/coldstart-child.ts: onnxruntime
 * loaded, the session opened with the pipeline's options, one batch-1 run), the order rotating from
 * round to round so drift hits every model alike. The files are read once before the rounds, so every
 * start finds them in the page cache, as a pod whose node pulled the model does. Per model the median
 * of each phase (start-up, session creation, first run) and of the total; per round the ratio of our
 * total to torch's, their median and range, against the target (<= 0.8x).
 *
 * BENCH_ROUNDS (default 5). Linux.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { loadAverageLine } from './machine.ts';
import { ensureFixtures, ensureOracle } from '../support/oracle.ts';

const TARGET_RATIO = 0.8;
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const here = import.meta.dirname;
const run = promisify(execFile);

interface ColdStart {
  startupMs: number;
  sessionMs: number;
  firstRunMs: number;
  totalMs: number;
}

/** One fresh process: spawn -> onnxruntime loaded -> session created -> first run done. */
async function coldStart(model: string): Promise<ColdStart> {
  const spawned = performance.timeOrigin + performance.now();
  const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'coldstart-child.ts'), model], { stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`cold start of ${model} failed (exit ${code})`);
  const { loaded, created, firstRun } = JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<'loaded' | 'created' | 'firstRun', number>;
  return { startupMs: loaded - spawned, sessionMs: created - loaded, firstRunMs: firstRun - created, totalMs: firstRun - spawned };
}

const median = (values: readonly number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
};
const ms = (value: number) => `${value.toFixed(0)} ms`.padStart(8);

const loadAtStart = loadavg();
const work = await mkdtemp(join(tmpdir(), 'heimdall-bench-coldstart-'));
try {
  const { files } = await ensureFixtures('large');
  const fixture = (name: string) => files.find((f) => f.name === name)!.path;
  const models: Record<string, string> = {
    ours: join(work, 'ours', 'model.onnx'),
    'ours, inline': join(work, 'ours-inline', 'model.onnx'),
    torch: join(work, 'torch.onnx'),
  };
  process.stderr.write('bench coldstart: exporting the large fixture with our exporter (as stored and registered, and with its weights inline) and with torch.onnx.export\n');
  for (const path of Object.values(models)) await mkdir(dirname(path), { recursive: true });
  // As functions/export/handler.ts writes it.
  await exportCheckpoint(fixture('full.pth'), models.ours!, { externalData: true });
  await exportCheckpoint(fixture('full.pth'), models['ours, inline']!, { externalData: false });
  const { debianPython } = await ensureOracle();
  await run(debianPython, [join(here, 'torch_export.py'), fixture('bare.pt'), models.torch!], { maxBuffer: 1 << 24 });
  // Into the page cache, data files too: every timed start then reads the same way.
  for (const path of Object.values(models)) await Promise.all([readFile(path), readFile(`${path}.data`).catch(() => undefined)]);

  const names = Object.keys(models);
  const timings: Record<string, ColdStart[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let round = 0; round < rounds; round++) {
    process.stderr.write(`bench coldstart: round ${round + 1}/${rounds}\n`);
    const order = names.map((_, i) => names[(i + round) % names.length]!);
    for (const name of order) timings[name]!.push(await coldStart(models[name]!));
  }

  const lines = [
    `cold start of the large model: process start -> session created (pipeline options) -> first batch-1 run done; ${rounds} rounds, one fresh process per model per round, order rotating; files in the page cache`,
    `  ${'model'.padEnd(20)} ${'start-up'.padStart(8)} ${'session'.padStart(8)} ${'1st run'.padStart(8)} ${'total'.padStart(8)}   (medians, n = ${rounds} each)`,
    ...names.map((name) => {
      const t = timings[name]!;
      return `  ${name.padEnd(20)} ${ms(median(t.map((c) => c.startupMs)))} ${ms(median(t.map((c) => c.sessionMs)))} ${ms(median(t.map((c) => c.firstRunMs)))} ${ms(median(t.map((c) => c.totalMs)))}`;
    }),
  ];
  const ratios: Record<string, number[]> = {};
  for (const name of names.filter((n) => n !== 'torch')) {
    // Paired by round: both starts of a round saw the same machine.
    const perRound = timings[name]!.map((c, i) => c.totalMs / timings.torch![i]!.totalMs);
    ratios[name] = perRound;
    const ratio = median(perRound);
    lines.push(
      `  ${name} / torch, total: median ${ratio.toFixed(3)} (min ${Math.min(...perRound).toFixed(3)}, max ${Math.max(...perRound).toFixed(3)} over ${rounds} rounds)   ${name === 'ours' ? `target <= ${TARGET_RATIO}: ${ratio <= TARGET_RATIO ? 'PASS' : 'MISS'}` : '(for comparison: not what is stored)'}`,
    );
  }
  lines.push(`  ${loadAverageLine(loadAtStart)}`);
  console.log(lines.join('\n'));
  console.log(JSON.stringify({ rounds, timings, ratios }));
} finally {
  await rm(work, { recursive: true, force: true });
}
