/**
 * `npx tsx test/bench/reference.bench.ts`: time per sample of the TypeScript reference forward pass
 * (shared/models/localization-net/reference.ts), the parity stage's fallback when a checkpoint has
 * no golden samples. Loads each variant's fixture `bare.pt`, runs one warm-up sample, then times
 * single samples (golden inputs, in turn) and prints the median next to the target: ConvNeXt-large,
 * one sample [1, 3, 128, 32], <= 5 s on the 2-core machine. Also checks the outputs against the
 * PyTorch golden values, so a fast but wrong pass cannot pass for a result.
 *
 * BENCH_VARIANTS (default tiny,large), BENCH_REFERENCE_RUNS (default 5).
 */
import { openCheckpoint } from '../../shared/checkpoint/index.ts';
import { inferArchitecture } from '../../shared/models/localization-net/infer.ts';
import { ReferenceModel } from '../../shared/models/localization-net/reference.ts';
import { ensureFixtures, readSafetensorsF32, type Variant } from '../support/oracle.ts';

const TARGET_SECONDS = 5;
const variants = (process.env.BENCH_VARIANTS ?? 'tiny,large').split(',') as Variant[];
const runs = Number(process.env.BENCH_REFERENCE_RUNS ?? 5);

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

const lines: string[] = [];
const report: Record<string, unknown> = {};
for (const variant of variants) {
  const fixtures = await ensureFixtures(variant);
  const file = fixtures.files.find((f) => f.name === 'bare.pt')!;
  process.stderr.write(`bench reference ${variant}: loading ${file.path}\n`);
  let started = performance.now();
  const checkpoint = await openCheckpoint(file.path);
  const model = await ReferenceModel.load(checkpoint.tensors, inferArchitecture(checkpoint.tensors, checkpoint.config));
  await checkpoint.close();
  const loadSeconds = (performance.now() - started) / 1000;

  const golden = readSafetensorsF32(file.golden);
  const inputs = golden.get('inputs')!.data;
  const samples = inputs.length / ReferenceModel.sampleSize;
  const expected = golden.get('positions')!.data;
  const sample = (i: number) => inputs.subarray((i % samples) * ReferenceModel.sampleSize, ((i % samples) + 1) * ReferenceModel.sampleSize);

  model.forward(sample(0), 1); // warm-up: lets the JIT compile the kernels
  const seconds: number[] = [];
  let maxDiff = 0;
  for (let run = 0; run < runs; run++) {
    process.stderr.write(`bench reference ${variant}: run ${run + 1}/${runs}\n`);
    started = performance.now();
    const out = model.forward(sample(run + 1), 1);
    seconds.push((performance.now() - started) / 1000);
    const at = ((run + 1) % samples) * 2;
    for (let k = 0; k < 2; k++) maxDiff = Math.max(maxDiff, Math.abs(out.positions[k]! - expected[at + k]!));
  }
  const perSample = median(seconds);
  const rss = process.memoryUsage().rss;
  report[variant] = { loadSeconds, secondsPerSample: perSample, runs: seconds, maxPositionDiff: maxDiff, rssBytes: rss };
  const verdict = perSample <= TARGET_SECONDS ? 'meets target' : 'MISSES target';
  lines.push(
    `${variant} (${model.spec.dims.join('/')} x ${model.spec.depths.join('/')})`,
    `  reference forward: ${perSample.toFixed(2)} s per sample (median of ${runs}; min ${Math.min(...seconds).toFixed(2)}, max ${Math.max(...seconds).toFixed(2)})` +
      (variant === 'large' ? `   [${verdict}: <= ${TARGET_SECONDS} s]` : ''),
    `  load ${loadSeconds.toFixed(2)} s   RSS ${(rss / 2 ** 20).toFixed(0)} MiB   max |diff| vs PyTorch (positions) ${maxDiff.toExponential(2)}`,
  );
}
console.log(lines.join('\n'));
console.log(JSON.stringify(report));
