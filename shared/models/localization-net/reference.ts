/**
 * LocalizationNet's forward pass in plain TypeScript: the reference the parity stage holds an ONNX
 * export to when a checkpoint carries no golden samples (DESIGN §5). It is written from torchvision's
 * ConvNeXt and PyTorch's eval-mode semantics, deliberately without the ONNX graph builder, so that a
 * mistake in the graph cannot hide in the reference too. The tests hold it to real PyTorch outputs.
 *
 *   stem        Conv2d(3, C0, k4, s4) -> LayerNorm2d
 *   stage s     [s > 0: LayerNorm2d -> Conv2d(k2, s2)] -> CNBlock x depth
 *   CNBlock     x + layer_scale * Linear(4C, C)(GELU(Linear(C, 4C)(LayerNorm(dwconv7x7(x)))))
 *   pooling     global average, flatten
 *   heads       (Linear -> BatchNorm1d -> ReLU -> Dropout) x 2 -> Linear(., 2)
 *   outputs     positions = position_head(f); uncertainties = clamp(softplus(uncertainty_head(f)), min, max)
 *
 * The whole batch goes through the network layer by layer, and each layer's weights are read from
 * the checkpoint when the pass reaches them and dropped after: memory stays near the largest
 * layer's weights (a few tens of MB for ConvNeXt-large) instead of the whole model, and every weight
 * read serves every sample. Each sample's outputs are exactly what it gives alone.
 *
 * Layout and precision: activations are channels-last (`[sample, H * W, C]`, what CNBlock's permute
 * makes anyway) and float64; weights are float32 as stored, every sum accumulated in float64. The
 * two pointwise Linear layers per block are almost all the work; they run in a WebAssembly SIMD
 * kernel, each sum in the order a plain loop takes (reference-kernel.ts).
 */
import type { LazyTensor } from '../../checkpoint/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import {
  BATCH_NORM_EPS,
  HEAD_NAMES,
  INPUT_SHAPE,
  LAYER_NORM_EPS,
  keys,
  stateDictEntries,
  type LocalizationNetSpec,
} from './architecture.ts';
import { LinearKernel, type Linear } from './reference-kernel.ts';

/** A batch's outputs, `[batch, 2]` each, as the ONNX model returns them. */
export interface ReferenceOutputs {
  readonly positions: Float32Array;
  readonly uncertainties: Float32Array;
}

export interface ForwardOptions {
  /** Called after each ConvNeXt block with the number done so far and the total. */
  readonly onProgress?: (doneBlocks: number, totalBlocks: number) => void;
  /** Stops between layers with the signal's reason. */
  readonly signal?: AbortSignal;
}

/** Feature maps of a batch, channels-last: `data[((sample * height + y) * width + x) * channels + c]`. */
interface FeatureMap {
  readonly batch: number;
  readonly height: number;
  readonly width: number;
  readonly channels: number;
  readonly data: Float64Array;
}

/**
 * A Conv2d whose stride equals its kernel (the stem's 4x4/4 and the downsamplers' 2x2/2): a Linear
 * over non-overlapping k x k patches. The weight is permuted as it is read, `[out, in, kh, kw]` to
 * `[out, kh, kw, in]`, so that a patch of a channels-last map is a contiguous run per kernel row.
 */
interface PatchConv {
  readonly kernel: number;
  readonly linear: Linear;
}

/** LayerNorm over the channels (LayerNorm2d in torchvision, nn.LayerNorm inside CNBlock). */
interface LayerNorm {
  readonly weight: Float64Array;
  readonly bias: Float64Array;
}

/** BatchNorm1d in eval mode: running statistics. */
interface BatchNorm {
  readonly weight: Float64Array;
  readonly bias: Float64Array;
  readonly runningMean: Float64Array;
  readonly runningVar: Float64Array;
}

const DEPTHWISE_KERNEL = 7;
const DEPTHWISE_PADDING = 3;
/** torch.nn.functional.softplus defaults: beta 1, threshold 20 (above it, softplus(x) = x). */
const SOFTPLUS_THRESHOLD = 20;

export class ReferenceModel {
  /** Values per input sample: 3 x 128 x 32. */
  static readonly sampleSize = INPUT_SHAPE[0] * INPUT_SHAPE[1] * INPUT_SHAPE[2];

  private constructor(
    readonly spec: LocalizationNetSpec,
    private readonly tensors: ReadonlyMap<string, LazyTensor>,
  ) {}

  /**
   * The reference model on these weights, read lazily by `forward` (keep the checkpoint open until
   * then). Throws INVALID_STATE_DICT naming the tensors when one is missing or its shape disagrees
   * with `spec`, before anything is read.
   */
  static open(tensors: ReadonlyMap<string, LazyTensor>, spec: LocalizationNetSpec): ReferenceModel {
    checkWeights(tensors, spec);
    return new ReferenceModel(spec, tensors);
  }

  /** The outputs of `batch` samples of a `[batch, 3, 128, 32]` input. */
  async forward(input: Float32Array, batch: number, options: ForwardOptions = {}): Promise<ReferenceOutputs> {
    checkInput(input, batch);
    const { signal } = options;
    signal?.throwIfAborted();
    const kernel = new LinearKernel();
    const weights = new WeightReader(this.tensors, kernel);
    const totalBlocks = this.spec.depths.reduce((a, b) => a + b, 0);
    let doneBlocks = 0;

    const [channels, height, width] = INPUT_SHAPE;
    let x = toChannelsLast(input, batch, channels, height, width);
    x = patchConv(x, await weights.patchConv(keys.stemConv), kernel);
    x = layerNorm(x, await weights.layerNorm(keys.stemNorm));
    for (let s = 0; s < this.spec.dims.length; s++) {
      if (s > 0) {
        x = layerNorm(x, await weights.layerNorm(keys.downsampleNorm(s)));
        x = patchConv(x, await weights.patchConv(keys.downsampleConv(s)), kernel);
      }
      for (let b = 0; b < this.spec.depths[s]!; b++) {
        x = await cnBlock(x, keys.block(s, b), weights, kernel);
        signal?.throwIfAborted();
        options.onProgress?.(++doneBlocks, totalBlocks);
      }
    }
    const features = globalAveragePool(x);

    const [positionName, uncertaintyName] = HEAD_NAMES;
    const positions = await runHead(features, batch, positionName, this.spec.positionHidden, weights, kernel);
    const uncertainties = (await runHead(features, batch, uncertaintyName, this.spec.uncertaintyHidden, weights, kernel)).map((v) =>
      Math.min(Math.max(softplus(v), this.spec.uncertaintyMin), this.spec.uncertaintyMax),
    );
    return { positions: Float32Array.from(positions), uncertainties: Float32Array.from(uncertainties) };
  }
}

/**
 * Reads weights when the pass needs them. Every tensor is read into the kernel's memory, valid until
 * the next read, which is all a Linear layer needs: no matrix is allocated (and left to the garbage
 * collector) per layer, and the kernel finds the weight where it lies.
 */
class WeightReader {
  constructor(
    private readonly tensors: ReadonlyMap<string, LazyTensor>,
    private readonly kernel: LinearKernel,
  ) {}

  /** A vector (bias, norm parameters, layer scale) of its own, in float64. */
  async vector(name: string): Promise<Float64Array> {
    return Float64Array.from(await this.read(name));
  }

  async layerNorm(prefix: string): Promise<LayerNorm> {
    return { weight: await this.vector(`${prefix}.weight`), bias: await this.vector(`${prefix}.bias`) };
  }

  /** A Linear layer; its weight may live in the kernel's memory: use it before the next read. */
  async linear(prefix: string): Promise<Linear> {
    const [outFeatures, inFeatures] = this.tensors.get(`${prefix}.weight`)!.shape as [number, number];
    const bias = await this.vector(`${prefix}.bias`);
    return { inFeatures, outFeatures, weight: await this.read(`${prefix}.weight`), bias };
  }

  /** A k x k / k Conv2d, its weight permuted to `[out, kh, kw, in]` (an array of its own). */
  async patchConv(prefix: string): Promise<PatchConv> {
    const [outChannels, inChannels, kernel] = this.tensors.get(`${prefix}.weight`)!.shape as [number, number, number, number];
    const bias = await this.vector(`${prefix}.bias`);
    const values = await this.read(`${prefix}.weight`);
    const taps = kernel * kernel;
    const weight = new Float32Array(values.length);
    for (let o = 0; o < outChannels; o++) {
      for (let c = 0; c < inChannels; c++) {
        for (let t = 0; t < taps; t++) weight[(o * taps + t) * inChannels + c] = values[(o * inChannels + c) * taps + t]!;
      }
    }
    return { kernel, linear: { inFeatures: taps * inChannels, outFeatures: outChannels, weight, bias } };
  }

  /** A depthwise 7x7 weight, `[C, 1, 7, 7]` permuted to `[7, 7, C]` (channels-last taps), of its own. */
  async depthwise(name: string): Promise<Float64Array> {
    const [channels] = this.tensors.get(name)!.shape as [number];
    const values = await this.read(name);
    const taps = DEPTHWISE_KERNEL * DEPTHWISE_KERNEL;
    const weight = new Float64Array(values.length);
    for (let c = 0; c < channels; c++) for (let t = 0; t < taps; t++) weight[t * channels + c] = values[c * taps + t]!;
    return weight;
  }

  async batchNorm(prefix: string): Promise<BatchNorm> {
    return {
      weight: await this.vector(`${prefix}.weight`),
      bias: await this.vector(`${prefix}.bias`),
      runningMean: await this.vector(`${prefix}.running_mean`),
      runningVar: await this.vector(`${prefix}.running_var`),
    };
  }

  /** The tensor's float32 values; they may alias the kernel's memory, so use them before the next read. */
  private async read(name: string): Promise<Float32Array> {
    const tensor = this.tensors.get(name)!;
    const values = await tensor.readFloat32(this.kernel.weightSpace(tensor.numel * 4));
    if (values.length !== tensor.numel) {
      throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `${name} read ${values.length} values, expected ${tensor.numel}`);
    }
    return values;
  }
}

// ---------------------------------------------------------------------------------------------
// Layers. Each returns a new array; inputs are never modified.

/** torchvision CNBlock: depthwise conv, LayerNorm, Linear, GELU, Linear, layer scale, residual. */
async function cnBlock(x: FeatureMap, block: string, weights: WeightReader, kernel: LinearKernel): Promise<FeatureMap> {
  const rows = x.batch * x.height * x.width;
  const depthwise = depthwiseConv7x7(x, await weights.depthwise(`${block}.block.0.weight`), await weights.vector(`${block}.block.0.bias`));
  const normed = layerNorm(depthwise, await weights.layerNorm(`${block}.block.2`));
  const hidden = kernel.apply(normed.data, rows, await weights.linear(`${block}.block.3`));
  for (let i = 0; i < hidden.length; i++) hidden[i] = gelu(hidden[i]!);
  const update = kernel.apply(hidden, rows, await weights.linear(`${block}.block.5`));
  const layerScale = await weights.vector(`${block}.layer_scale`);
  const out = new Float64Array(x.data.length);
  const c = x.channels;
  for (let p = 0; p < rows; p++) {
    for (let ch = 0; ch < c; ch++) {
      const i = p * c + ch;
      out[i] = x.data[i]! + layerScale[ch]! * update[i]!;
    }
  }
  return { ...x, data: out };
}

/** Conv2d(C, C, 7, padding=3, groups=C) on each sample, channels-last; `weight` is `[7, 7, C]`. */
function depthwiseConv7x7(x: FeatureMap, weight: Float64Array, bias: Float64Array): FeatureMap {
  const { batch, height, width, channels: c, data } = x;
  const out = new Float64Array(data.length);
  for (let n = 0; n < batch; n++) {
    const sample = n * height * width;
    for (let y = 0; y < height; y++) {
      for (let xx = 0; xx < width; xx++) {
        const o = (sample + y * width + xx) * c;
        for (let ch = 0; ch < c; ch++) out[o + ch] = bias[ch]!;
        for (let ky = 0; ky < DEPTHWISE_KERNEL; ky++) {
          const sy = y + ky - DEPTHWISE_PADDING;
          if (sy < 0 || sy >= height) continue;
          for (let kx = 0; kx < DEPTHWISE_KERNEL; kx++) {
            const sx = xx + kx - DEPTHWISE_PADDING;
            if (sx < 0 || sx >= width) continue;
            const from = (sample + sy * width + sx) * c;
            const tap = (ky * DEPTHWISE_KERNEL + kx) * c;
            for (let ch = 0; ch < c; ch++) out[o + ch]! += data[from + ch]! * weight[tap + ch]!;
          }
        }
      }
    }
  }
  return { ...x, data: out };
}

/** LayerNorm over the channels of each pixel (biased variance, as torch). */
function layerNorm(x: FeatureMap, norm: LayerNorm): FeatureMap {
  const { channels: c, data } = x;
  const out = new Float64Array(data.length);
  for (let p = 0; p < data.length; p += c) {
    let mean = 0;
    for (let ch = 0; ch < c; ch++) mean += data[p + ch]!;
    mean /= c;
    let variance = 0;
    for (let ch = 0; ch < c; ch++) variance += (data[p + ch]! - mean) ** 2;
    variance /= c;
    const inv = 1 / Math.sqrt(variance + LAYER_NORM_EPS);
    for (let ch = 0; ch < c; ch++) out[p + ch] = (data[p + ch]! - mean) * inv * norm.weight[ch]! + norm.bias[ch]!;
  }
  return { ...x, data: out };
}

/** Conv2d with stride = kernel: gather each k x k patch (channels-last order) and apply the Linear. */
function patchConv(x: FeatureMap, conv: PatchConv, kernel: LinearKernel): FeatureMap {
  const { kernel: k, linear: layer } = conv;
  const { batch, channels: c, data } = x;
  if (x.height % k !== 0 || x.width % k !== 0) throw new RangeError(`a ${x.height}x${x.width} map does not divide into ${k}x${k} patches`);
  const height = x.height / k;
  const width = x.width / k;
  const patches = new Float64Array(batch * height * width * layer.inFeatures);
  let at = 0;
  for (let n = 0; n < batch; n++) {
    for (let y = 0; y < height; y++) {
      for (let xx = 0; xx < width; xx++) {
        for (let ky = 0; ky < k; ky++) {
          const row = ((n * x.height + y * k + ky) * x.width + xx * k) * c; // k pixels side by side: k * c contiguous values
          patches.set(data.subarray(row, row + k * c), at);
          at += k * c;
        }
      }
    }
  }
  return { batch, height, width, channels: layer.outFeatures, data: kernel.apply(patches, batch * height * width, layer) };
}

/** AdaptiveAvgPool2d(1) + flatten: per sample, the mean of each channel over all pixels (`[batch, C]`). */
function globalAveragePool(x: FeatureMap): Float64Array {
  const { batch, channels: c, data } = x;
  const pixels = x.height * x.width;
  const out = new Float64Array(batch * c);
  for (let n = 0; n < batch; n++) {
    const o = n * c;
    for (let p = 0; p < pixels; p++) {
      const from = (n * pixels + p) * c;
      for (let ch = 0; ch < c; ch++) out[o + ch]! += data[from + ch]!;
    }
    for (let ch = 0; ch < c; ch++) out[o + ch]! /= pixels;
  }
  return out;
}

/** Linear -> BatchNorm1d (running stats) -> ReLU -> Dropout (identity in eval), repeated; then Linear (`[batch, 2]`). */
async function runHead(
  features: Float64Array,
  batch: number,
  head: string,
  hidden: readonly number[],
  weights: WeightReader,
  kernel: LinearKernel,
): Promise<Float64Array> {
  let x = features;
  for (let layer = 0; layer < hidden.length; layer++) {
    x = kernel.apply(x, batch, await weights.linear(keys.headLinear(head, layer)));
    const norm = await weights.batchNorm(keys.headNorm(head, layer));
    const width = hidden[layer]!;
    for (let i = 0; i < x.length; i++) {
      const ch = i % width;
      const normalized = ((x[i]! - norm.runningMean[ch]!) / Math.sqrt(norm.runningVar[ch]! + BATCH_NORM_EPS)) * norm.weight[ch]! + norm.bias[ch]!;
      x[i] = Math.max(normalized, 0);
    }
  }
  return kernel.apply(x, batch, await weights.linear(keys.headLinear(head, hidden.length)));
}

// ---------------------------------------------------------------------------------------------
// Elementwise functions

/** Exact GELU (torch's default, approximate='none'): x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)). */
export function gelu(x: number): number {
  return 0.5 * x * (1 + erf(x * Math.SQRT1_2));
}

/** torch.nn.functional.softplus with beta 1, threshold 20. */
export function softplus(x: number): number {
  return x > SOFTPLUS_THRESHOLD ? x : Math.log1p(Math.exp(x));
}

/**
 * The error function, to a few ulp (<= 1e-15 absolute) in float64. JavaScript has no Math.erf.
 *
 *   |x| < 2:   erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (1 * 3 * ... * (2n+1))
 *              (Abramowitz & Stegun 7.1.6): every term positive, so no cancellation; a polynomial in
 *              x^2 by Horner's rule, as many terms as the interval of |x| needs (see SERIES_INTERVALS).
 *   2 <= |x| < 6: erf(x) = 1 - erfc(x), erfc(x) = exp(-x^2) / sqrt(pi) / (x + (1/2) / (x + 1 / (x + (3/2) / (x + ...))))
 *              (A&S 7.1.14's continued fraction, evaluated forwards by Lentz's method; under 60 steps).
 *   |x| >= 6:  erf(x) = sign(x): erfc(6) = 2e-17 is below half an ulp of 1.
 */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax === 0 || Number.isNaN(x)) return x; // +-0 keep their sign
  if (ax >= 6) return Math.sign(x);
  const value = ax < 2 ? erfSeries(ax) : 1 - erfcContinuedFraction(ax);
  return x < 0 ? -value : value;
}

const TWO_OVER_SQRT_PI = 1.1283791670955126;
const ONE_OVER_SQRT_PI = 0.5641895835477563;

/** The series' coefficients 2^n / (1 * 3 * ... * (2n + 1)), each the double nearest the exact quotient. */
const SERIES_COEFFICIENTS = Array.from({ length: 64 }, (_, n) => {
  let oddFactorial = 1n;
  for (let k = 3n; k <= 2n * BigInt(n) + 1n; k += 2n) oddFactorial *= k;
  const scale = 64 + oddFactorial.toString(2).length; // quotient bits to spare before Number rounds it
  return Number((2n ** BigInt(n) << BigInt(scale)) / oddFactorial) * 2 ** -scale;
});

/**
 * For |x| below each bound, the terms the series needs: up to the first below 2^-62 (the terms fall
 * by more than half from there, so the rest sums to under 2^-61 of the first, x). GELU sees mostly
 * |x| < 1, about 20 terms; a fixed count and no division per term make it several times faster than
 * summing term by term until they vanish.
 */
const SERIES_INTERVALS = [0.25, 0.5, 1, 1.5, 2].map((bound) => {
  let terms = 1;
  while (SERIES_COEFFICIENTS[terms]! * bound ** (2 * terms) >= 2 ** -62 || terms <= 2 * bound * bound) terms++;
  return { bound, terms };
});

function erfSeries(x: number): number {
  const { terms } = SERIES_INTERVALS.find((interval) => x < interval.bound)!;
  const xSquared = x * x;
  let sum = SERIES_COEFFICIENTS[terms - 1]!;
  for (let n = terms - 2; n >= 0; n--) sum = sum * xSquared + SERIES_COEFFICIENTS[n]!;
  return TWO_OVER_SQRT_PI * expMinusSquare(x) * x * sum;
}

/** erfc(x) for x >= 2: f = x + a1 / (x + a2 / (x + ...)) with a_n = n / 2, by the modified Lentz method. */
function erfcContinuedFraction(x: number): number {
  let f = x;
  let c = x;
  let d = 0;
  for (let n = 1; n < 200; n++) {
    const a = n / 2;
    d = 1 / (x + a * d);
    c = x + a / c;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 2e-16) break;
  }
  return (ONE_OVER_SQRT_PI * expMinusSquare(x)) / f;
}

/**
 * exp(-x^2) without the rounding error of x * x (a few ulp of the result near x = 2): with z = x
 * rounded to single precision, z * z is exact in double, and x^2 = z^2 + d with d = (x - z)(x + z).
 * |d| < 2^-23 x^2 < 5e-6 for |x| < 6, so exp(-d) = 1 - d + d^2/2 - d^3/6 to well under an ulp: one
 * Math.exp instead of two.
 */
function expMinusSquare(x: number): number {
  const z = Math.fround(x);
  const d = (x - z) * (x + z);
  return Math.exp(-z * z) * (1 - d * (1 - d * (0.5 - d / 6)));
}

// ---------------------------------------------------------------------------------------------
// Plumbing

/** Every tensor `spec` implies must be present with its exact shape; lists all that are not. */
function checkWeights(tensors: ReadonlyMap<string, LazyTensor>, spec: LocalizationNetSpec): void {
  if (spec.dims.length !== 4 || spec.depths.length !== 4) {
    throw new HeimdallError(
      ErrorCodes.UNSUPPORTED_ARCHITECTURE,
      `reference model: a ConvNeXt has 4 stages, spec has dims [${spec.dims.join(', ')}] and depths [${spec.depths.join(', ')}]`,
    );
  }
  const problems: string[] = [];
  for (const entry of stateDictEntries(spec)) {
    if (entry.kind === 'num_batches_tracked') continue;
    const tensor = tensors.get(entry.name);
    if (!tensor) problems.push(`${entry.name} is missing`);
    else if (tensor.shape.length !== entry.shape.length || tensor.shape.some((d, i) => d !== entry.shape[i])) {
      problems.push(`${entry.name} has shape [${tensor.shape.join(', ')}], expected [${entry.shape.join(', ')}]`);
    }
  }
  if (problems.length > 0) {
    const shown = problems.slice(0, 5).join('; ') + (problems.length > 5 ? `; and ${problems.length - 5} more` : '');
    throw new HeimdallError(
      ErrorCodes.INVALID_STATE_DICT,
      `reference model: the weights do not match the ${spec.variant} spec (dims [${spec.dims.join(', ')}], depths [${spec.depths.join(', ')}]): ${shown}`,
    );
  }
}

function checkInput(input: Float32Array, batch: number): void {
  if (!Number.isInteger(batch) || batch < 1 || input.length !== batch * ReferenceModel.sampleSize) {
    throw new RangeError(`input has ${input.length} values; a batch of ${batch} needs ${batch} x ${INPUT_SHAPE.join(' x ')}`);
  }
}

/** NCHW planes of each sample to channels-last maps. */
function toChannelsLast(input: Float32Array, batch: number, channels: number, height: number, width: number): FeatureMap {
  const data = new Float64Array(input.length);
  const plane = height * width;
  const size = channels * plane;
  for (let n = 0; n < batch; n++) {
    for (let c = 0; c < channels; c++) for (let p = 0; p < plane; p++) data[n * size + p * channels + c] = input[n * size + c * plane + p]!;
  }
  return { batch, height, width, channels, data };
}
