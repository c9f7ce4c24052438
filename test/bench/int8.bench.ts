/**
 * `npm run bench:int8`: the INT8 variant (DESIGN §3 Variants) against the fp32 model it derives
 * from, and against onnxruntime's own quantize_dynamic of torch.onnx.export's graph of the same
 * weights (the anchor), all measured in this run. Per fixture (BENCH_VARIANTS, default large):
 *   - export: fp32 alone and fp32 + int8, each in a fresh process, alternating (BENCH_EXPORT_RUNS,
 *     default 3, medians): the time the variant adds (target <= 3 s) and the peak RSS of the export
 *     with it (target <= 1.5x the weights); the anchor's quantizer time and peak RSS;
 *   - size (target <= 230 MB for large) beside the anchor's;
 *   - latency at batch 1 and 8: all four models in one process, rounds interleaved as the
 *     benchmark stage times them (shared/runtime/timing.ts, the pipeline's session options), p50
 *     with its interval and n, and the paired int8/fp32 ratio with its interval (targets <= 0.65 at
 *     batch 1, <= 0.75 at batch 8), the anchor's ratio beside it;
 *   - the error against fp32 per output on parity's samples (PyTorch's golden inputs, and the
 *     reference samples parity uses without them), next to the default tolerance.
 * BENCH_BUDGET_MS (default 8000): timed runs per batch size, all four models together.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { formatBytes } from '../../shared/cli/format.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { latencyStats, pairedRatio } from '../../shared/gate/statistics.ts';
import { variantPath } from '../../shared/models/localization-net/export.ts';
import { sampleInput } from '../../shared/runtime/sample-input.ts';
import { openSession } from '../../shared/runtime/session.ts';
import { timeBatch } from '../../shared/runtime/timing.ts';
import { loadAverageLine, weightBytes } from './machine.ts';
import { ensureFixtures, ensureOracle, readSafetensorsF32, type Variant } from '../support/oracle.ts';
import { servicesVenvBin } from '../support/services/venv.ts';

const run = promisify(execFile);
const here = import.meta.dirname;
const fixtures = (process.env.BENCH_VARIANTS ?? 'large').split(',') as Variant[];
const exportRuns = Number(process.env.BENCH_EXPORT_RUNS ?? 3);
const budgetMs = Number(process.env.BENCH_BUDGET_MS ?? 8000);
const TARGETS = { addedExportSeconds: 3, exportRssOverWeights: 1.5, largeBytes: 230e6, ratio: { 1: 0.65, 8: 0.75 } as Record<number, number> };
const tolerance = loadConfig({}).variantTolerance.int8;

interface Measure {
  seconds: number;
  maxRssBytes: number;
  bytes: number;
  variantBytes?: { int8?: number };
}

const median = (values: readonly number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const verdict = (value: number, limit: number, unit = '') => `[target <= ${limit}${unit}: ${value <= limit ? 'PASS' : 'MISS'}]`;
const ms = (v: number) => `${v.toFixed(2)} ms`;

/** One export in a fresh process (export-child.ts), so its peak RSS is the exporter's alone. */
async function exportOnce(checkpoint: string, out: string, variants: string[]): Promise<Measure> {
  await Promise.all([rm(out, { force: true }), rm(variantPath(out, 'int8'), { force: true })]);
  const { stdout } = await run(process.execPath, ['--import', 'tsx', join(here, 'export-child.ts'), checkpoint, out, ...variants], { maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Measure;
}

/** Largest and mean absolute error of each output of `model` against `reference` on `input`. */
function errors(reference: ort.InferenceSession.ReturnType, model: ort.InferenceSession.ReturnType) {
  return Object.fromEntries(
    ['positions', 'uncertainties'].map((name) => {
      const [a, b] = [reference[name]!.data as Float32Array, model[name]!.data as Float32Array];
      let max = 0;
      let sum = 0;
      for (let i = 0; i < a.length; i++) {
        const d = Math.abs(a[i]! - b[i]!);
        max = Math.max(max, d);
        sum += d;
      }
      return [name, { maxAbs: max, meanAbs: sum / a.length }];
    }),
  );
}

const loadAtStart = loadavg();
const { debianPython } = await ensureOracle();
const servicesPython = join(await servicesVenvBin(), 'python');
const work = await mkdtemp(join(tmpdir(), 'heimdall-bench-int8-'));
const lines: string[] = [];
const report: Record<string, unknown> = {};
try {
  for (const fixture of fixtures) {
    const set = await ensureFixtures(fixture);
    const checkpoint = set.files.find((f) => f.name === 'bare.pt')!;
    const weights = await weightBytes(checkpoint.path);
    const [ours, torch, torchInt8] = [join(work, `${fixture}.onnx`), join(work, `${fixture}-torch.onnx`), join(work, `${fixture}-torch.int8.onnx`)];

    process.stderr.write(`bench int8 ${fixture}: ${exportRuns} exports without and with the variant, alternating\n`);
    const plain: Measure[] = [];
    const withInt8: Measure[] = [];
    for (let i = 0; i < exportRuns; i++) {
      plain.push(await exportOnce(checkpoint.path, ours, []));
      withInt8.push(await exportOnce(checkpoint.path, ours, ['int8']));
    }
    process.stderr.write(`bench int8 ${fixture}: the anchor (torch.onnx.export, then onnxruntime's quantize_dynamic)\n`);
    await run(debianPython, [join(here, 'torch_export.py'), checkpoint.path, torch], { maxBuffer: 1 << 24 });
    const anchor = JSON.parse((await run(servicesPython, [join(here, 'quantize_dynamic.py'), torch, torchInt8], { maxBuffer: 1 << 24 })).stdout.trim().split('\n').at(-1)!) as Measure;

    process.stderr.write(`bench int8 ${fixture}: latency, four models interleaved, ${budgetMs} ms of timed runs per batch size\n`);
    const models = { fp32: ours, int8: variantPath(ours, 'int8'), torch, torchInt8 };
    const sessions = Object.fromEntries(await Promise.all(Object.entries(models).map(async ([name, path]) => [name, (await openSession(path)).session] as const)));
    const names = Object.keys(models);
    const latency: Record<number, unknown> = {};
    const latencyLines: string[] = [];
    for (const batch of [1, 8]) {
      const feeds = { mel_spectrogram: new ort.Tensor('float32', sampleInput(batch), [batch, 3, 128, 32]) };
      const { timings, warmup } = await timeBatch(names.map((n) => sessions[n]!), feeds, { warmup: 5, budgetMs, minRuns: 20 });
      const stats = Object.fromEntries(names.map((n, i) => [n, latencyStats(batch, timings[i]!)]));
      const ours8 = pairedRatio(timings[1]!, timings[0]!);
      const anchor8 = pairedRatio(timings[3]!, timings[2]!);
      latency[batch] = { stats, ratio: ours8, anchorRatio: anchor8, warmup };
      const p50 = (n: string) => `${ms(stats[n]!.p50)} [${ms(stats[n]!.p50Interval[0])}, ${ms(stats[n]!.p50Interval[1])}]`;
      latencyLines.push(
        `  batch ${batch} (n ${stats.fp32!.n} each, after ${warmup.runs} warm-up rounds${warmup.settled ? '' : ', not settled'}): p50 fp32 ${p50('fp32')}, int8 ${p50('int8')}`,
        `    int8/fp32 ${ours8.ratio.toFixed(3)} [${ours8.interval.map((r) => r.toFixed(3)).join(', ')}] ${verdict(ours8.ratio, TARGETS.ratio[batch]!, 'x')}   anchor: torch graph ${p50('torch')}, quantize_dynamic ${p50('torchInt8')}, ratio ${anchor8.ratio.toFixed(3)} [${anchor8.interval.map((r) => r.toFixed(3)).join(', ')}]`,
      );
    }
    // Parity's samples: PyTorch's golden inputs, and the reference samples parity runs without them.
    const golden = readSafetensorsF32(checkpoint.golden).get('inputs')!;
    const samples = loadConfig({}).parity.samples;
    const inputs = { [`${golden.shape[0]} golden inputs`]: new ort.Tensor('float32', golden.data, golden.shape), [`${samples} reference samples`]: new ort.Tensor('float32', sampleInput(samples), [samples, 3, 128, 32]) };
    const accuracy: Record<string, unknown> = {};
    const accuracyLines: string[] = [];
    for (const [label, input] of Object.entries(inputs)) {
      const [fp32Out, int8Out, torchOut, torchInt8Out] = await Promise.all(names.map((n) => sessions[n]!.run({ mel_spectrogram: input })));
      const ourErrors = errors(fp32Out!, int8Out!);
      const anchorErrors = errors(torchOut!, torchInt8Out!);
      accuracy[label] = { ours: ourErrors, anchor: anchorErrors };
      const worst = Math.max(...Object.values(ourErrors).map((e) => e.maxAbs));
      const describe = (e: typeof ourErrors) => Object.entries(e).map(([n, x]) => `${n} max ${x.maxAbs.toExponential(2)} mean ${x.meanAbs.toExponential(2)}`).join(', ');
      accuracyLines.push(`  |int8 - fp32| on ${label}: ${describe(ourErrors)} ${verdict(worst, tolerance)} (the default tolerance)   anchor: ${describe(anchorErrors)}`);
    }
    await Promise.all(Object.values(sessions).map((s) => s.release()));

    const [plainSeconds, int8Seconds] = [median(plain.map((m) => m.seconds)), median(withInt8.map((m) => m.seconds))];
    const rss = Math.max(...withInt8.map((m) => m.maxRssBytes));
    const int8Bytes = withInt8[0]!.variantBytes!.int8!;
    report[fixture] = { weightBytes: weights, export: { plain, withInt8 }, anchor, int8Bytes, latency, accuracy };
    lines.push(
      `${fixture} (weights ${formatBytes(weights)})`,
      `  export fp32 ${plainSeconds.toFixed(2)} s, fp32 + int8 ${int8Seconds.toFixed(2)} s (medians of ${exportRuns}): int8 adds ${(int8Seconds - plainSeconds).toFixed(2)} s ${verdict(int8Seconds - plainSeconds, TARGETS.addedExportSeconds, ' s')}   anchor: quantize_dynamic ${anchor.seconds.toFixed(1)} s`,
      // The RSS target is about the weights (large); a small model's ratio is dominated by Node's own ~150 MB.
      `  peak RSS of the export with int8 ${formatBytes(rss)} = ${(rss / weights).toFixed(2)}x the weights${fixture === 'large' ? ` ${verdict(rss / weights, TARGETS.exportRssOverWeights, 'x')}` : ''}   anchor: quantize_dynamic ${formatBytes(anchor.maxRssBytes)}`,
      `  size int8 ${(int8Bytes / 1e6).toFixed(1)} MB (fp32 ${(withInt8[0]!.bytes / 1e6).toFixed(1)} MB)${fixture === 'large' ? ` ${verdict(int8Bytes / 1e6, TARGETS.largeBytes / 1e6, ' MB')}` : ''}   anchor: ${(anchor.bytes / 1e6).toFixed(1)} MB`,
      ...latencyLines,
      ...accuracyLines,
    );
  }
  lines.push(loadAverageLine(loadAtStart));
  console.log(lines.join('\n'));
  console.log(JSON.stringify(report));
} finally {
  await rm(work, { recursive: true, force: true });
}
