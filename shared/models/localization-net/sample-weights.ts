import { pyDict, pyFloat, pyOrderedDict, type PickleOrderedDict, type PickleValue, type TensorValue } from '../../checkpoint/pickle-writer.ts';
import { writeTorchCheckpoint, type TorchCheckpointOptions } from '../../checkpoint/torch-writer.ts';
import { OUTPUT_WIDTH, specForVariant, stateDictEntries, type LocalizationNetSpec, type ParameterEntry } from './architecture.ts';

/**
 * Deterministic stand-in weights for LocalizationNet, so the demo and the tests can make real
 * checkpoints of any variant without Python or a trained model. Values are seeded per tensor (seed
 * + tensor name), so each tensor can be generated on its own, when its bytes are written, and is
 * the same every time:
 *
 *   Conv / Linear weight       N(0, variance 1/fan_in)      fan_in = product of shape[1:]
 * (normals by the ziggurat method; uniforms and normals both from mulberry32)
 *   Conv / Linear bias         N(0, std 0.02); the uncertainty head's output bias N(-1, 0.02)
 *   LayerNorm weight / bias    1 + U(-0.1, 0.1) / U(-0.05, 0.05)
 *   layer_scale                U(0.1, 0.3)                  (torchvision initialises 1e-6; larger
 *                                                            so the blocks matter to the output)
 *   BatchNorm weight / bias    1 + U(-0.1, 0.1) / U(-0.05, 0.05)
 *   running_mean / running_var N(0, std 0.2) / U(0.5, 1.5)
 *   num_batches_tracked        int64 scalar in 1000..9999
 */

export interface SampleTensor {
  readonly name: string;
  readonly entry: ParameterEntry;
  /** Lazy: `tensor.data()` generates the values (a new array on each call, same values). */
  readonly tensor: Omit<TensorValue, 'data'> & { readonly data: () => Float32Array | BigInt64Array };
}

/** Every state_dict entry of `spec`, in PyTorch's order, with deterministic pseudo-random values. */
export function sampleStateDict(spec: LocalizationNetSpec, seed: number): SampleTensor[] {
  const entries = stateDictEntries(spec);
  const byName = new Map(entries.map((e) => [e.name, e]));
  return entries.map((entry) => {
    const generate = (): Float32Array | BigInt64Array => sampleValues(entry, byName, seed);
    return { name: entry.name, entry, tensor: { kind: 'tensor', dtype: entry.dtype, shape: entry.shape, data: generate } };
  });
}

export type SampleLayout = 'bare' | 'model_state_dict' | 'lightning';

export interface SampleCheckpointOptions {
  /** A torchvision ConvNeXt preset: tiny, small, base, large. Ignored when `spec` is given. */
  readonly variant: string;
  readonly seed: number;
  /**
   * bare: the state_dict itself (an OrderedDict of tensors);
   * model_state_dict: `{'model_state_dict': sd, 'config': {...}, 'epoch': 0}`;
   * lightning: `{'epoch': 0, 'global_step': 0, 'pytorch-lightning_version': …, 'state_dict': {'model.' + k: …}, 'hyper_parameters': {...}}`.
   */
  readonly layout: SampleLayout;
  /** A custom architecture (e.g. other head widths); defaults to `specForVariant(variant)`. */
  readonly spec?: LocalizationNetSpec;
  /**
   * Attach `_metadata` (per-module `{'version': n}`) to the state_dict OrderedDict, as
   * `Module.state_dict()` does (pickled as OrderedDict state + BUILD). Default true.
   */
  readonly metadata?: boolean;
  readonly archiveName?: string;
  readonly zip?: TorchCheckpointOptions['zip'];
}

export interface SampleCheckpointResult {
  readonly bytes: number;
  readonly spec: LocalizationNetSpec;
  /** state_dict entries written. */
  readonly tensors: number;
  /** float32 values written (weights, biases and BatchNorm running statistics). */
  readonly parameters: number;
}

/** The object a sample checkpoint pickles (tensors lazy), for callers that write or inspect it themselves. */
export function sampleCheckpointRoot(options: SampleCheckpointOptions): { root: PickleValue; spec: LocalizationNetSpec; sample: SampleTensor[] } {
  const spec = options.spec ?? specForVariant(options.variant);
  const sample = sampleStateDict(spec, options.seed);
  const withMetadata = options.metadata ?? true;
  const stateDict = (prefix: string) =>
    pyOrderedDict(
      sample.map((s) => [prefix + s.name, s.tensor] as const),
      withMetadata ? pyDict({ _metadata: moduleMetadata(sample.map((s) => s.entry), prefix) }) : undefined,
    );
  const config = pyDict({
    backbone_size: spec.variant,
    uncertainty_min: pyFloat(spec.uncertaintyMin),
    uncertainty_max: pyFloat(spec.uncertaintyMax),
  });
  let root: PickleValue;
  switch (options.layout) {
    case 'bare':
      root = stateDict('');
      break;
    case 'model_state_dict':
      root = pyDict({ model_state_dict: stateDict(''), config, epoch: 0 });
      break;
    case 'lightning':
      root = pyDict({
        epoch: 0,
        global_step: 0,
        'pytorch-lightning_version': '2.4.0',
        state_dict: stateDict('model.'),
        hyper_parameters: config,
      });
      break;
    default:
      throw new RangeError(`unknown layout ${String(options.layout)}`);
  }
  return { root, spec, sample };
}

/**
 * Writes a sample checkpoint of LocalizationNet. Each tensor is generated while the previous one's
 * record is written, so at most two tensors' values are in memory at once.
 */
export async function writeSampleCheckpoint(path: string, options: SampleCheckpointOptions): Promise<SampleCheckpointResult> {
  const { root, spec, sample } = sampleCheckpointRoot(options);
  const writeOptions: TorchCheckpointOptions = {
    ...(options.archiveName !== undefined ? { archiveName: options.archiveName } : {}),
    ...(options.zip !== undefined ? { zip: options.zip } : {}),
  };
  const bytes = await writeTorchCheckpoint(path, root, writeOptions);
  const parameters = sample.reduce((n, s) => n + (s.entry.dtype === 'float32' ? s.entry.shape.reduce((a, b) => a * b, 1) : 0), 0);
  return { bytes, spec, tensors: sample.length, parameters };
}

/**
 * `state_dict()._metadata`: `{module_path: {'version': n}}` for the root and every module holding a
 * parameter or buffer, in pre-order. BatchNorm's `_version` is 2, every other module here has 1.
 * Modules without parameters (GELU, Permute, Dropout, …) also appear in torch's; they carry nothing
 * a reader needs and are left out.
 */
function moduleMetadata(entries: readonly ParameterEntry[], prefix: string): PickleOrderedDict {
  const batchNorms = new Set(entries.filter((e) => e.kind === 'running_mean').map((e) => modulePath(e.name)));
  const seen = new Set<string>();
  const out: Array<readonly [string, PickleValue]> = [];
  const visit = (path: string, version: number) => {
    if (seen.has(path)) return;
    seen.add(path);
    out.push([path, pyDict({ version })]);
  };
  visit('', 1);
  const base = prefix.replace(/\.$/, '');
  if (base) base.split('.').forEach((_, i, parts) => visit(parts.slice(0, i + 1).join('.'), 1));
  for (const entry of entries) {
    const parts = modulePath(entry.name).split('.');
    parts.forEach((_, i) => {
      const path = parts.slice(0, i + 1).join('.');
      visit(prefix + path, batchNorms.has(path) ? 2 : 1);
    });
  }
  return pyOrderedDict(out);
}

const modulePath = (name: string) => name.slice(0, name.lastIndexOf('.'));

// ---------------------------------------------------------------------------------------------
// Values

/**
 * mulberry32, a small 32-bit PRNG, with its state in a plain object so the fill loops below can
 * keep it in a local variable (a closure call per value costs ~3x the generator itself).
 */
interface Rng {
  state: number;
}

const MULBERRY_INCREMENT = 0x6d2b79f5;
const TWO_POW_MINUS_32 = 2.3283064365386963e-10;

/** mulberry32 uniform in [0, 1), for the odd scalar. */
export function mulberry32(seed: number): () => number {
  const rng: Rng = { state: seed | 0 };
  return () => nextUniform(rng);
}

function nextUniform(rng: Rng): number {
  const a = (rng.state = (rng.state + MULBERRY_INCREMENT) | 0);
  let t = Math.imul(a ^ (a >>> 15), 1 | a);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) * TWO_POW_MINUS_32;
}

/** FNV-1a (32-bit) of the name, mixed with the seed: each tensor gets its own stream. */
function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b1);
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  // A final avalanche (murmur3 fmix32) so near-identical names give unrelated streams.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

/**
 * Marsaglia & Tsang's ziggurat (J. Stat. Softw. 5(8), 2000), 128 layers, fed by mulberry32: exact
 * normals at ~5 ns each (the polar method's log per pair costs ~5x that, which matters at 197M values).
 */
const ZIG_R = 3.442619855899;
const ZIG_K = new Uint32Array(128);
const ZIG_W = new Float64Array(128);
const ZIG_F = new Float64Array(128);
{
  const m1 = 2147483648;
  const vn = 9.91256303526217e-3;
  let dn = ZIG_R;
  let tn = dn;
  const q = vn / Math.exp(-0.5 * dn * dn);
  ZIG_K[0] = Math.floor((dn / q) * m1);
  ZIG_K[1] = 0;
  ZIG_W[0] = q / m1;
  ZIG_W[127] = dn / m1;
  ZIG_F[0] = 1;
  ZIG_F[127] = Math.exp(-0.5 * dn * dn);
  for (let i = 126; i >= 1; i--) {
    dn = Math.sqrt(-2 * Math.log(vn / dn + Math.exp(-0.5 * dn * dn)));
    ZIG_K[i + 1] = Math.floor((dn / tn) * m1);
    tn = dn;
    ZIG_F[i] = Math.exp(-0.5 * dn * dn);
    ZIG_W[i] = dn / m1;
  }
}

/** One mulberry32 step as a signed 32-bit integer. */
function nextInt(rng: Rng): number {
  const a = (rng.state = (rng.state + MULBERRY_INCREMENT) | 0);
  let t = Math.imul(a ^ (a >>> 15), 1 | a);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return t ^ (t >>> 14);
}

/** The ziggurat's slow path: the wedges and the tail beyond ZIG_R (about 1.2% of draws). */
function normalSlow(rng: Rng, hz: number, iz: number): number {
  for (;;) {
    const x = hz * ZIG_W[iz]!;
    if (iz === 0) {
      let tx: number;
      let ty: number;
      do {
        tx = -Math.log(1 - nextUniform(rng)) / ZIG_R;
        ty = -Math.log(1 - nextUniform(rng));
      } while (ty + ty < tx * tx);
      return hz > 0 ? ZIG_R + tx : -ZIG_R - tx;
    }
    if (ZIG_F[iz]! + nextUniform(rng) * (ZIG_F[iz - 1]! - ZIG_F[iz]!) < Math.exp(-0.5 * x * x)) return x;
    hz = nextInt(rng);
    iz = hz & 127;
    if (Math.abs(hz) < ZIG_K[iz]!) return hz * ZIG_W[iz]!;
  }
}

function fillNormal(out: Float32Array, mean: number, std: number, rng: Rng): void {
  const n = out.length;
  let a = rng.state;
  for (let i = 0; i < n; i++) {
    a = (a + MULBERRY_INCREMENT) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    const hz = t ^ (t >>> 14);
    const iz = hz & 127;
    let z: number;
    if (Math.abs(hz) < ZIG_K[iz]!) {
      z = hz * ZIG_W[iz]!;
    } else {
      rng.state = a;
      z = normalSlow(rng, hz, iz);
      a = rng.state;
    }
    out[i] = mean + std * z;
  }
  rng.state = a;
}

/** Standard normal values (for tests of the generator). */
export function sampleNormals(count: number, seed: number): Float32Array {
  const out = new Float32Array(count);
  fillNormal(out, 0, 1, { state: seed | 0 });
  return out;
}

function fillUniform(out: Float32Array, low: number, high: number, rng: Rng): void {
  let a = rng.state;
  const span = (high - low) * TWO_POW_MINUS_32;
  for (let i = 0; i < out.length; i++) {
    a = (a + MULBERRY_INCREMENT) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    out[i] = low + span * ((t ^ (t >>> 14)) >>> 0);
  }
  rng.state = a;
}

function sampleValues(entry: ParameterEntry, byName: ReadonlyMap<string, ParameterEntry>, seed: number): Float32Array | BigInt64Array {
  const rng: Rng = { state: tensorSeed(seed, entry.name) };
  if (entry.kind === 'num_batches_tracked') return BigInt64Array.of(BigInt(1000 + Math.floor(nextUniform(rng) * 9000)));
  const numel = entry.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(numel);
  switch (entry.kind) {
    case 'layer_scale':
      fillUniform(out, 0.1, 0.3, rng);
      break;
    case 'running_mean':
      fillNormal(out, 0, 0.2, rng);
      break;
    case 'running_var':
      fillUniform(out, 0.5, 1.5, rng);
      break;
    case 'weight':
      if (entry.shape.length >= 2) {
        const fanIn = entry.shape.slice(1).reduce((a, b) => a * b, 1);
        fillNormal(out, 0, 1 / Math.sqrt(fanIn), rng);
      } else {
        fillUniform(out, 0.9, 1.1, rng); // LayerNorm / BatchNorm scale
      }
      break;
    case 'bias': {
      const weight = byName.get(entry.name.replace(/bias$/, 'weight'));
      if (weight && weight.shape.length >= 2) {
        // The uncertainty head's output bias sits at -1, so softplus lands near 0.3, well inside
        // the default clamp range [0.01, 1], instead of near softplus(0) = 0.69 where many
        // outputs would be clamped to 1 and parity checks would see constants.
        const uncertaintyOutput = entry.name.startsWith('uncertainty_head.') && weight.shape[0] === OUTPUT_WIDTH;
        fillNormal(out, uncertaintyOutput ? -1 : 0, 0.02, rng);
      }
      else fillUniform(out, -0.05, 0.05, rng); // LayerNorm / BatchNorm shift
      break;
    }
  }
  return out;
}

