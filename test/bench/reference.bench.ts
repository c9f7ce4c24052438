/**
 * `npx tsx test/bench/reference.bench.ts` (second part of `npm run bench:pipeline`): the TypeScript
 * reference forward pass (shared/models/localization-net/reference.ts), the parity stage's fallback
 * when a checkpoint has no golden samples, run as parity runs it (reference-pass.ts: the samples
 * split between worker threads, the weights streamed from the checkpoint layer by layer). Per
 * variant, on the fixture `bare.pt`: the pass over the parity stage's default sample count, timed
 * BENCH_REFERENCE_RUNS times, and the process's peak RSS during it; the outputs are checked against
 * PyTorch's golden values, so a fast but wrong pass cannot pass for a result. Target: ConvNeXt-large,
 * the parity stage's pass, <= 3 s on the 2-core machine (it then costs parity less than the ONNX
 * model's own session).
 *
 * BENCH_VARIANTS (default tiny,large), BENCH_REFERENCE_RUNS (default 3).
 */
import { openCheckpoint } from '../../shared/checkpoint/index.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { inferArchitecture } from '../../shared/models/localization-net/infer.ts';
import { ReferenceModel } from '../../shared/models/localization-net/reference.ts';
import { referencePass } from '../../shared/models/localization-net/reference-pass.ts';
import { ensureFixtures, readSafetensorsF32, type Variant } from '../support/oracle.ts';
import { peakRss, resetPeakRss, treeRss } from './rss.ts';

const TARGET_SECONDS = 3;
const variants = (process.env.BENCH_VARIANTS ?? 'tiny,large').split(',') as Variant[];
const runs = Number(process.env.BENCH_REFERENCE_RUNS ?? 3);
const samples = loadConfig({}).parity.samples;

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

const lines: string[] = [];
const report: Record<string, unknown> = {};
for (const variant of variants) {
  const fixtures = await ensureFixtures(variant);
  const file = fixtures.files.find((f) => f.name === 'bare.pt')!;
  const checkpoint = await openCheckpoint(file.path);
  const spec = inferArchitecture(checkpoint.tensors, checkpoint.config);
  await checkpoint.close();

  const golden = readSafetensorsF32(file.golden);
  const inputs = golden.get('inputs')!.data.subarray(0, samples * ReferenceModel.sampleSize);
  const expected = golden.get('positions')!.data;

  const seconds: number[] = [];
  let maxDiff = 0;
  const baseline = treeRss(process.pid);
  resetPeakRss(process.pid);
  for (let run = 0; run < runs; run++) {
    process.stderr.write(`bench reference ${variant}: run ${run + 1}/${runs}\n`);
    const started = performance.now();
    const out = await referencePass(file.path, spec, inputs, samples);
    seconds.push((performance.now() - started) / 1000);
    for (let i = 0; i < samples * 2; i++) maxDiff = Math.max(maxDiff, Math.abs(out.positions[i]! - expected[i]!));
  }
  const rss = peakRss(process.pid);
  const pass = median(seconds);
  report[variant] = { samples, secondsPerPass: pass, runs: seconds, maxPositionDiff: maxDiff, peakRssBytes: rss, rssBeforeBytes: baseline };
  const verdict = pass <= TARGET_SECONDS ? 'PASS' : 'MISS';
  lines.push(
    `${variant} (${spec.dims.join('/')} x ${spec.depths.join('/')}), ${samples} samples`,
    `  reference pass: ${pass.toFixed(2)} s (median of ${runs}; min ${Math.min(...seconds).toFixed(2)}, max ${Math.max(...seconds).toFixed(2)}; ${(pass / samples).toFixed(2)} s per sample)` +
      (variant === 'large' ? `   target <= ${TARGET_SECONDS} s: ${verdict}` : ''),
    `  peak RSS ${(rss / 2 ** 20).toFixed(0)} MiB (${(baseline / 2 ** 20).toFixed(0)} MiB before)   max |diff| vs PyTorch (positions) ${maxDiff.toExponential(2)}`,
  );
}
console.log(lines.join('\n'));
console.log(JSON.stringify(report));
