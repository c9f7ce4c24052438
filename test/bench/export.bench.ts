/**
 * `npm run bench:export`: our exporter against torch.onnx.export on the same checkpoints, measured
 * in the same run. Prints export time and peak RSS for tiny and large, and for both graphs
 * onnxruntime's session-creation time (as the pipeline's stages open a model) and latency (batch 1
 * and 8). Targets (2-core machine): large exported in <= 3 s, peak RSS <= 1.5x the weight bytes,
 * our graph's latency within 5% of the torch-exported graph's.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { formatBytes } from '../../shared/cli/format.ts';
import { openSession } from '../../shared/runtime/session.ts';
import { loadAverageLine, weightBytes } from './machine.ts';
import { ensureFixtures, ensureOracle } from '../support/oracle.ts';

const run = promisify(execFile);
const here = import.meta.dirname;
const variants = (process.env.BENCH_VARIANTS ?? 'tiny,large').split(',') as Array<'tiny' | 'large'>;
const exportRuns = Number(process.env.BENCH_EXPORT_RUNS ?? 3);
const sessionRuns = Number(process.env.BENCH_SESSION_RUNS ?? 3);

interface Measure {
  seconds: number;
  maxRssBytes: number;
}

interface Runs extends Measure {
  /** Fastest and slowest run. */
  spread: [number, number];
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const percentile = (values: number[], p: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor((p / 100) * values.length))]!;

async function ours(checkpoint: string, out: string): Promise<Runs> {
  const runs: Measure[] = [];
  for (let i = 0; i < exportRuns; i++) {
    // Each run writes a new file, as torch.onnx.export does: renaming over the previous run's output
    // costs about a second of ext4 disk work on this machine (the new file's writeback starts first: auto_da_alloc).
    await rm(out, { force: true });
    const { stdout } = await run(process.execPath, ['--import', 'tsx', join(here, 'export-child.ts'), checkpoint, out], { maxBuffer: 1 << 20 });
    runs.push(JSON.parse(stdout.trim().split('\n').at(-1)!));
  }
  const seconds = runs.map((r) => r.seconds);
  return { seconds: median(seconds), spread: [Math.min(...seconds), Math.max(...seconds)], maxRssBytes: Math.max(...runs.map((r) => r.maxRssBytes)) };
}

async function torchExport(python: string, checkpoint: string, out: string): Promise<Measure> {
  const { stdout } = await run(python, [join(here, 'torch_export.py'), checkpoint, out], { maxBuffer: 1 << 24 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!);
}

/**
 * Median session-creation time (ms) of each model, opened as the pipeline's stages open it
 * (shared/runtime/session.ts, default options); the models take turns, so both see the same machine.
 */
async function sessionCreation(models: Record<string, string>, runs: number): Promise<Record<string, number>> {
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(models).map((n) => [n, []]));
  for (let i = 0; i < runs; i++) {
    for (const [name, path] of Object.entries(models)) {
      const { session, createMs } = await openSession(path);
      await session.release();
      times[name]!.push(createMs);
    }
  }
  return Object.fromEntries(Object.entries(times).map(([n, t]) => [n, median(t)]));
}

/** p50 and p90 latency (ms) of both models, runs interleaved so both see the same machine state. */
async function latency(models: Record<string, string>, batch: number, runs: number) {
  const input = new ort.Tensor('float32', new Float32Array(batch * 3 * 128 * 32).map(() => Math.random() * 2 - 1), [batch, 3, 128, 32]);
  const sessions = Object.fromEntries(
    await Promise.all(Object.entries(models).map(async ([name, path]) => [name, await ort.InferenceSession.create(path, { intraOpNumThreads: 2 })] as const)),
  );
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(models).map((n) => [n, []]));
  for (const session of Object.values(sessions)) for (let i = 0; i < 3; i++) await session.run({ mel_spectrogram: input });
  for (let i = 0; i < runs; i++) {
    for (const [name, session] of Object.entries(sessions)) {
      const started = performance.now();
      await session.run({ mel_spectrogram: input });
      times[name]!.push(performance.now() - started);
    }
  }
  await Promise.all(Object.values(sessions).map((s) => s.release()));
  return Object.fromEntries(Object.entries(times).map(([n, t]) => [n, { p50: percentile(t, 50), p90: percentile(t, 90) }]));
}

const loadAtStart = loadavg();
const { debianPython } = await ensureOracle();
const work = await mkdtemp(join(tmpdir(), 'heimdall-bench-'));
const report: Record<string, unknown> = {};
const lines: string[] = [];
const verdict = (ok: boolean) => (ok ? 'meets target' : 'MISSES target');
try {
  for (const variant of variants) {
    const fixtures = await ensureFixtures(variant);
    const checkpoint = fixtures.files.find((f) => f.name === 'bare.pt')!.path;
    const weights = await weightBytes(checkpoint);
    process.stderr.write(`bench ${variant}: exporting with heimdall (${exportRuns} runs)\n`);
    const ourOnnx = join(work, `${variant}-ours.onnx`);
    const torchOnnx = join(work, `${variant}-torch.onnx`);
    const our = await ours(checkpoint, ourOnnx);
    process.stderr.write(`bench ${variant}: exporting with torch.onnx.export\n`);
    const torch = await torchExport(debianPython, checkpoint, torchOnnx);
    process.stderr.write(`bench ${variant}: onnxruntime session creation (${sessionRuns} each)\n`);
    const sessions = await sessionCreation({ ours: ourOnnx, torch: torchOnnx }, sessionRuns);
    process.stderr.write(`bench ${variant}: onnxruntime latency\n`);
    const runs = variant === 'large' ? 30 : 60;
    const b1 = await latency({ ours: ourOnnx, torch: torchOnnx }, 1, runs);
    const b8 = await latency({ ours: ourOnnx, torch: torchOnnx }, 8, Math.ceil(runs / 2));
    const rssRatio = our.maxRssBytes / weights;
    report[variant] = { weightBytes: weights, ours: our, torch, sessionCreateMs: sessions, latency: { batch1: b1, batch8: b8 } };
    lines.push(
      `${variant} (weights ${formatBytes(weights)})`,
      `  export   heimdall ${our.seconds.toFixed(2)} s (median of ${exportRuns}, ${our.spread.map((t) => t.toFixed(2)).join('-')})   torch.onnx.export ${torch.seconds.toFixed(2)} s   speed-up x${(torch.seconds / our.seconds).toFixed(1)}` +
        (variant === 'large' ? `   [${verdict(our.seconds <= 3)}: <= 3 s]` : ''),
      // The RSS target is about the weights (large); a small model's ratio is dominated by Node's own ~150 MB.
      `  peak RSS heimdall ${formatBytes(our.maxRssBytes)} (${rssRatio.toFixed(2)}x weights)   torch ${formatBytes(torch.maxRssBytes)} (${(torch.maxRssBytes / weights).toFixed(2)}x)` +
        (variant === 'large' ? `   [${verdict(rssRatio <= 1.5)}: <= 1.5x]` : ''),
      `  session creation heimdall ${sessions.ours!.toFixed(0)} ms   torch graph ${sessions.torch!.toFixed(0)} ms   ratio ${(sessions.ours! / sessions.torch!).toFixed(3)}   (median of ${sessionRuns}, default session options)`,
      ...[['batch 1', b1], ['batch 8', b8]].map(([label, l]) => {
        const t = l as Record<string, { p50: number; p90: number }>;
        const ratio = t.ours!.p50 / t.torch!.p50;
        return `  latency ${label}: heimdall p50 ${t.ours!.p50.toFixed(2)} ms   torch graph p50 ${t.torch!.p50.toFixed(2)} ms   ratio ${ratio.toFixed(3)}   [${verdict(ratio <= 1.05)}: <= 1.05]`;
      }),
    );
  }
  lines.push(loadAverageLine(loadAtStart));
  console.log(lines.join('\n'));
  console.log(JSON.stringify(report));
} finally {
  await rm(work, { recursive: true, force: true });
}
