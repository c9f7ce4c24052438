/**
 * Our graph as the ONNX ecosystem's own tools see it, next to torch.onnx.export's graph of the same
 * weights (DESIGN §4, canonical graph). onnxruntime's quantize_dynamic (per-channel int8 weights for
 * MatMul and Gemm, the recipe of issue 14's INT8 anchor) must shrink our tiny and large exports as
 * much as it shrinks torch's, and both graphs must hold the same nodes by op type, before and after
 * quantization, apart from the differences in DIFFERENCES, each with its reason.
 *
 * torch's side costs minutes and 4 GB (its export of large, then the quantizer's 28 s and 2.4 GB),
 * so its facts are cached under ${HEIMDALL_CACHE_DIR:-~/.cache/heimdall}/onnx-tooling, keyed by the
 * checkpoint's sha256 and the scripts that produce them. Ours are produced by the exporter under test
 * on every run; only the quantizer's verdict on our file is cached, keyed by the file's own sha256
 * (the export is deterministic: any change to the graph or the weights is a new key).
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { LocalizationNetSpec } from '../../shared/models/localization-net/architecture.ts';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { ensureFixtures, ensureOracle, heimdallCacheDir, ORACLE_DIR, runPython } from '../support/oracle.ts';
import { servicesVenvBin } from '../support/services/venv.ts';
import { tempDir } from '../support/temp.ts';

const TOOLING_SCRIPT = join(ORACLE_DIR, 'onnx_tooling.py');
const TORCH_EXPORT_SCRIPT = join(import.meta.dirname, '../bench/torch_export.py');
/** How far our quantized size may be from torch's quantized size of the same weights. */
const SIZE_TOLERANCE = 0.03;

interface GraphFacts {
  bytes: number;
  ops: Record<string, number>;
  /** Transpose/Identity/Cast nodes reading an initializer, as onnx_tooling.py finds them. */
  layout_nodes: string[];
  quantized: { bytes: number; ops: Record<string, number>; seconds: number; peak_rss_bytes: number };
}

/**
 * Where our graph differs from torch.onnx.export's (opset 14) by op type: how many nodes each has,
 * and why. Every op type not listed appears as often in both (Transpose included: 2 per block and
 * per channels-first LayerNorm, none on a weight).
 */
const DIFFERENCES: ReadonlyArray<{ op: string; ours: number; torch: (spec: LocalizationNetSpec) => number; reason: string }> = [
  {
    op: 'Constant',
    ours: 0,
    // Per decomposed LayerNorm: epsilon and the exponent 2; per GELU: sqrt(2), 1 and 0.5; the clamp's min and max.
    torch: (spec) => 2 * layerNorms(spec) + 3 * blocks(spec) + 2,
    reason: 'torch writes each use of a scalar (LayerNorm epsilon and exponent, GELU constants, clamp range) as a Constant node; we write each scalar once, as an initializer',
  },
  {
    op: 'BatchNormalization',
    ours: 0,
    torch: (spec) => spec.positionHidden.length + spec.uncertaintyHidden.length,
    reason: "we fold each head's eval-mode BatchNorm1d into the Linear before it (graph.ts foldBatchNorm); torch keeps it as a node after the Gemm",
  },
];

const blocks = (spec: LocalizationNetSpec) => spec.depths.reduce((a, b) => a + b, 0);
/** One per block, plus the stem's and each downsampler's LayerNorm2d. */
const layerNorms = (spec: LocalizationNetSpec) => blocks(spec) + spec.dims.length;

/** The op counts `torch` implies for our graph: the same, with each listed difference put in. */
function expectedOurs(torch: Record<string, number>, spec: LocalizationNetSpec): Record<string, number> {
  const expected = { ...torch };
  for (const difference of DIFFERENCES) {
    expect(torch[difference.op] ?? 0, `torch's ${difference.op} nodes (${difference.reason})`).toBe(difference.torch(spec));
    if (difference.ours === 0) delete expected[difference.op];
    else expected[difference.op] = difference.ours;
  }
  return expected;
}

const sha256 = (text: string | Buffer) => createHash('sha256').update(text).digest('hex');

let cacheDir: string;
let work: string;
let servicesPython: string;
let debianPython: string;
beforeAll(async () => {
  ({ debianPython } = await ensureOracle());
  servicesPython = join(await servicesVenvBin(), 'python');
  const scripts = sha256(Buffer.concat(await Promise.all([readFile(TOOLING_SCRIPT), readFile(TORCH_EXPORT_SCRIPT)]))).slice(0, 12);
  cacheDir = join(heimdallCacheDir(), 'onnx-tooling', scripts);
  await mkdir(cacheDir, { recursive: true });
  work = await tempDir('heimdall-onnx-tooling-');
});

/** `compute()`'s facts, kept in the cache under `key` (written atomically: a killed run leaves no torn entry). */
async function cached(key: string, compute: () => Promise<GraphFacts>): Promise<{ facts: GraphFacts; hit: boolean }> {
  const path = join(cacheDir, `${key}.json`);
  try {
    return { facts: JSON.parse(await readFile(path, 'utf8')) as GraphFacts, hit: true };
  } catch {
    const facts = await compute();
    await writeFile(`${path}.${process.pid}.tmp`, JSON.stringify(facts));
    await rename(`${path}.${process.pid}.tmp`, path);
    return { facts, hit: false };
  }
}

/** onnx_tooling.py on `model`: its facts and those of its quantized twin (removed afterwards). */
async function toolingFacts(model: string): Promise<GraphFacts> {
  const quantized = `${model}.int8.onnx`;
  try {
    return JSON.parse((await runPython(servicesPython, TOOLING_SCRIPT, [model, quantized])).trim().split('\n').at(-1)!) as GraphFacts;
  } finally {
    await rm(quantized, { force: true });
  }
}

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

for (const variant of ['tiny', 'large'] as const) {
  describe(`ConvNeXt-${variant}: our export and torch.onnx.export's, through onnxruntime's tools`, () => {
    let ours: { facts: GraphFacts; hit: boolean };
    let torch: { facts: GraphFacts; hit: boolean };
    let spec: LocalizationNetSpec;
    beforeAll(async () => {
      const fixtures = await ensureFixtures(variant);
      const checkpoint = fixtures.files.find((f) => f.name === 'bare.pt')!.path;
      const ourModel = join(work, `${variant}-ours.onnx`);
      const started = performance.now();
      const exported = await exportCheckpoint(checkpoint, ourModel);
      spec = exported.spec;
      try {
        ours = await cached(`ours-${exported.onnx.sha256.slice(0, 32)}`, () => toolingFacts(ourModel));
      } finally {
        await rm(ourModel, { force: true });
      }
      torch = await cached(`torch-${exported.checkpoint.sha256.slice(0, 32)}`, async () => {
        const torchModel = join(work, `${variant}-torch.onnx`);
        try {
          await runPython(debianPython, TORCH_EXPORT_SCRIPT, [checkpoint, torchModel]);
          return await toolingFacts(torchModel);
        } finally {
          await rm(torchModel, { force: true });
        }
      });
      const seconds = (performance.now() - started) / 1000;
      const source = (c: { hit: boolean }) => (c.hit ? 'cached' : 'computed');
      console.log(
        `onnx-tooling ${variant}: quantize_dynamic ours ${mb(ours.facts.bytes)} -> ${mb(ours.facts.quantized.bytes)} (${ours.facts.quantized.seconds.toFixed(1)} s, ${source(ours)}), ` +
          `torch ${mb(torch.facts.bytes)} -> ${mb(torch.facts.quantized.bytes)} (${torch.facts.quantized.seconds.toFixed(1)} s, ${mb(torch.facts.quantized.peak_rss_bytes)} RSS, ${source(torch)}); ` +
          `ratio of quantized sizes ${(ours.facts.quantized.bytes / torch.facts.quantized.bytes).toFixed(4)}; ${seconds.toFixed(1)} s`,
      );
    });

    it('stores no weight behind a Transpose, Identity or Cast (as onnx sees the file)', () => {
      expect(ours.facts.layout_nodes).toEqual([]);
      expect(ours.facts.ops.Transpose).toBe(torch.facts.ops.Transpose);
    });

    it(`is shrunk by quantize_dynamic as much as torch's graph of the same weights (within ${SIZE_TOLERANCE * 100} %)`, () => {
      // The same weights in both files (torch's also holds the unfolded BatchNorm parameters).
      expect(Math.abs(ours.facts.bytes / torch.facts.bytes - 1)).toBeLessThan(0.01);
      expect(Math.abs(ours.facts.quantized.bytes / torch.facts.quantized.bytes - 1)).toBeLessThanOrEqual(SIZE_TOLERANCE);
      // int8 MatMul/Gemm weights: under a third of the float32 model (tiny 113 -> 34 MB, large 788 -> 220 MB).
      expect(ours.facts.quantized.bytes / ours.facts.bytes).toBeLessThan(0.33);
    });

    it("has torch's nodes by op type, apart from the documented differences", () => {
      expect(ours.facts.ops).toEqual(expectedOurs(torch.facts.ops, spec));
    });

    it("quantizes to torch's quantized nodes by op type (every MatMul and Gemm quantized), apart from the same differences", () => {
      expect(ours.facts.quantized.ops).toEqual(expectedOurs(torch.facts.quantized.ops, spec));
      expect(ours.facts.quantized.ops.MatMul ?? 0).toBe(0);
      expect(ours.facts.quantized.ops.Gemm ?? 0).toBe(0);
      expect(ours.facts.quantized.ops.MatMulInteger).toBe(ours.facts.ops.MatMul! + ours.facts.ops.Gemm!);
    });
  });
}
