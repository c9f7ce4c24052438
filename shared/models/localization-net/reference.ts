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
 * Layout and precision: activations are channels-last (`[H * W, C]`, what CNBlock's permute makes
 * anyway) and float64; weights stay float32 as stored, with every sum accumulated in float64. The
 * two pointwise Linear layers per block are almost all the work; they run as dot products of an
 * activation row with a weight row (torch's `[out, in]` layout), both contiguous in memory.
 */
import type { LazyTensor } from '../../checkpoint/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import {
  BATCH_NORM_EPS,
  HEAD_NAMES,
  INPUT_SHAPE,
  LAYER_NORM_EPS,
  OUTPUT_WIDTH,
  keys,
  stateDictEntries,
  type LocalizationNetSpec,
} from './architecture.ts';

/** One sample's outputs, in float64. */
export interface SampleOutputs {
  readonly positions: Float64Array;
  readonly uncertainties: Float64Array;
}

/** A batch's outputs, `[batch, 2]` each, as the ONNX model returns them. */
export interface ReferenceOutputs {
  readonly positions: Float32Array;
  readonly uncertainties: Float32Array;
}

export interface ForwardAsyncOptions {
  /** Called after each sample with the number done so far. */
  readonly onProgress?: (done: number, total: number) => void;
  /** Stops between blocks with the signal's reason. */
  readonly signal?: AbortSignal;
}

/** A feature map, channels-last: `data[(y * width + x) * channels + c]`. */
interface FeatureMap {
  readonly height: number;
  readonly width: number;
  readonly channels: number;
  readonly data: Float64Array;
}

/** torch.nn.Linear: `weight` as torch stores it, `[out, in]` row-major. */
interface Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weight: Float32Array;
  readonly bias: Float64Array;
}

/**
 * A Conv2d whose stride equals its kernel (the stem's 4x4/4 and the downsamplers' 2x2/2): a Linear
 * over non-overlapping k x k patches. The weight is permuted once, `[out, in, kh, kw]` to
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

interface CNBlock {
  /** Depthwise 7x7 weight, permuted `[C, 1, 7, 7]` to `[7, 7, C]` (channels-last taps). */
  readonly depthwiseWeight: Float32Array;
  readonly depthwiseBias: Float64Array;
  readonly norm: LayerNorm;
  readonly expand: Linear;
  readonly project: Linear;
  readonly layerScale: Float64Array;
}

interface Stage {
  /** LayerNorm2d then Conv2d(k2, s2), before stages 1..3. */
  readonly downsample?: { readonly norm: LayerNorm; readonly conv: PatchConv };
  readonly blocks: readonly CNBlock[];
}

interface Head {
  readonly hidden: readonly { readonly linear: Linear; readonly norm: BatchNorm }[];
  readonly output: Linear;
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
    private readonly stem: { readonly conv: PatchConv; readonly norm: LayerNorm },
    private readonly stages: readonly Stage[],
    private readonly positionHead: Head,
    private readonly uncertaintyHead: Head,
  ) {}

  /**
   * Reads every weight `spec` names (float32, about the checkpoint's size in memory). Throws
   * INVALID_STATE_DICT naming the tensors when one is missing or its shape disagrees with `spec`.
   */
  static async load(tensors: ReadonlyMap<string, LazyTensor>, spec: LocalizationNetSpec): Promise<ReferenceModel> {
    checkWeights(tensors, spec);
    const read = async (name: string): Promise<Float32Array> => {
      const tensor = tensors.get(name)!;
      const values = await tensor.readFloat32();
      if (values.length !== tensor.numel) {
        throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `${name} read ${values.length} values, expected ${tensor.numel}`);
      }
      return values;
    };
    const vector = async (name: string) => Float64Array.from(await read(name));
    const linear = async (prefix: string): Promise<Linear> => {
      const [outFeatures, inFeatures] = tensors.get(`${prefix}.weight`)!.shape as [number, number];
      return { inFeatures, outFeatures, weight: await read(`${prefix}.weight`), bias: await vector(`${prefix}.bias`) };
    };
    const layerNorm = async (prefix: string): Promise<LayerNorm> => ({
      weight: await vector(`${prefix}.weight`),
      bias: await vector(`${prefix}.bias`),
    });
    const patchConv = async (prefix: string): Promise<PatchConv> => {
      const [outChannels, inChannels, kernel] = tensors.get(`${prefix}.weight`)!.shape as [number, number, number, number];
      const weight = permute(await read(`${prefix}.weight`), [outChannels, inChannels, kernel, kernel], [0, 2, 3, 1]);
      const inFeatures = kernel * kernel * inChannels;
      return { kernel, linear: { inFeatures, outFeatures: outChannels, weight, bias: await vector(`${prefix}.bias`) } };
    };
    const head = async (name: string, hidden: readonly number[]): Promise<Head> => {
      const layers: Head['hidden'][number][] = [];
      for (let layer = 0; layer < hidden.length; layer++) {
        const norm = keys.headNorm(name, layer);
        layers.push({
          linear: await linear(keys.headLinear(name, layer)),
          norm: {
            weight: await vector(`${norm}.weight`),
            bias: await vector(`${norm}.bias`),
            runningMean: await vector(`${norm}.running_mean`),
            runningVar: await vector(`${norm}.running_var`),
          },
        });
      }
      return { hidden: layers, output: await linear(keys.headLinear(name, hidden.length)) };
    };

    const stem = { conv: await patchConv(keys.stemConv), norm: await layerNorm(keys.stemNorm) };
    const stages: Stage[] = [];
    for (let s = 0; s < spec.dims.length; s++) {
      const dim = spec.dims[s]!;
      const downsample = s > 0 ? { norm: await layerNorm(keys.downsampleNorm(s)), conv: await patchConv(keys.downsampleConv(s)) } : undefined;
      const blocks: CNBlock[] = [];
      for (let b = 0; b < spec.depths[s]!; b++) {
        const block = keys.block(s, b);
        const depthwise = await read(`${block}.block.0.weight`);
        blocks.push({
          depthwiseWeight: permute(depthwise, [dim, DEPTHWISE_KERNEL * DEPTHWISE_KERNEL], [1, 0]),
          depthwiseBias: await vector(`${block}.block.0.bias`),
          norm: await layerNorm(`${block}.block.2`),
          expand: await linear(`${block}.block.3`),
          project: await linear(`${block}.block.5`),
          layerScale: await vector(`${block}.layer_scale`),
        });
      }
      stages.push(downsample ? { downsample, blocks } : { blocks });
    }
    const [positionName, uncertaintyName] = HEAD_NAMES;
    return new ReferenceModel(
      spec,
      stem,
      stages,
      await head(positionName, spec.positionHidden),
      await head(uncertaintyName, spec.uncertaintyHidden),
    );
  }

  /** The whole batch at once; blocks the event loop for the whole pass (see forwardAsync). */
  forward(input: Float32Array, batch: number): ReferenceOutputs {
    checkInput(input, batch);
    const outputs = emptyOutputs(batch);
    for (let i = 0; i < batch; i++) store(outputs, i, this.forwardSample(input, i));
    return outputs;
  }

  /** Like `forward`, but gives the event loop a turn after every ConvNeXt block. */
  async forwardAsync(input: Float32Array, batch: number, options: ForwardAsyncOptions = {}): Promise<ReferenceOutputs> {
    checkInput(input, batch);
    options.signal?.throwIfAborted();
    const outputs = emptyOutputs(batch);
    for (let i = 0; i < batch; i++) {
      const steps = this.sampleSteps(input, i);
      let step = steps.next();
      while (!step.done) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        options.signal?.throwIfAborted();
        step = steps.next();
      }
      store(outputs, i, step.value);
      options.onProgress?.(i + 1, batch);
    }
    return outputs;
  }

  /** Sample `index` of a `[B, 3, 128, 32]` input. */
  forwardSample(input: Float32Array, index: number): SampleOutputs {
    const steps = this.sampleSteps(input, index);
    for (;;) {
      const step = steps.next();
      if (step.done) return step.value;
    }
  }

  /** The forward pass of one sample, pausing (yield) after each block. */
  private *sampleSteps(input: Float32Array, index: number): Generator<void, SampleOutputs, void> {
    const size = ReferenceModel.sampleSize;
    if (!Number.isInteger(index) || index < 0 || (index + 1) * size > input.length) {
      throw new RangeError(`sample ${index} is outside an input of ${input.length / size} samples`);
    }
    const [channels, height, width] = INPUT_SHAPE;
    let x = toChannelsLast(input.subarray(index * size, (index + 1) * size), channels, height, width);

    x = layerNorm(patchConv(x, this.stem.conv), this.stem.norm);
    for (const stage of this.stages) {
      if (stage.downsample) x = patchConv(layerNorm(x, stage.downsample.norm), stage.downsample.conv);
      for (const block of stage.blocks) {
        x = cnBlock(x, block);
        yield;
      }
    }
    const features = globalAveragePool(x);

    const positions = runHead(features, this.positionHead);
    const uncertainties = runHead(features, this.uncertaintyHead).map((v) =>
      Math.min(Math.max(softplus(v), this.spec.uncertaintyMin), this.spec.uncertaintyMax),
    );
    return { positions, uncertainties };
  }
}

// ---------------------------------------------------------------------------------------------
// Layers. Each returns a new array; inputs are never modified.

/** torchvision CNBlock: depthwise conv, LayerNorm, Linear, GELU, Linear, layer scale, residual. */
function cnBlock(x: FeatureMap, block: CNBlock): FeatureMap {
  const pixels = x.height * x.width;
  const normed = layerNorm(depthwiseConv7x7(x, block.depthwiseWeight, block.depthwiseBias), block.norm);
  const hidden = linear(normed.data, pixels, block.expand);
  for (let i = 0; i < hidden.length; i++) hidden[i] = gelu(hidden[i]!);
  const update = linear(hidden, pixels, block.project);
  const out = new Float64Array(x.data.length);
  const c = x.channels;
  for (let p = 0; p < pixels; p++) {
    for (let ch = 0; ch < c; ch++) {
      const i = p * c + ch;
      out[i] = x.data[i]! + block.layerScale[ch]! * update[i]!;
    }
  }
  return { ...x, data: out };
}

/** Conv2d(C, C, 7, padding=3, groups=C), channels-last; `weight` is `[7, 7, C]`. */
function depthwiseConv7x7(x: FeatureMap, weight: Float32Array, bias: Float64Array): FeatureMap {
  const { height, width, channels: c, data } = x;
  const out = new Float64Array(data.length);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < width; xx++) {
      const o = (y * width + xx) * c;
      for (let ch = 0; ch < c; ch++) out[o + ch] = bias[ch]!;
      for (let ky = 0; ky < DEPTHWISE_KERNEL; ky++) {
        const sy = y + ky - DEPTHWISE_PADDING;
        if (sy < 0 || sy >= height) continue;
        for (let kx = 0; kx < DEPTHWISE_KERNEL; kx++) {
          const sx = xx + kx - DEPTHWISE_PADDING;
          if (sx < 0 || sx >= width) continue;
          const from = (sy * width + sx) * c;
          const tap = (ky * DEPTHWISE_KERNEL + kx) * c;
          for (let ch = 0; ch < c; ch++) out[o + ch]! += data[from + ch]! * weight[tap + ch]!;
        }
      }
    }
  }
  return { height, width, channels: c, data: out };
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
function patchConv(x: FeatureMap, conv: PatchConv): FeatureMap {
  const { kernel: k, linear: layer } = conv;
  const { channels: c, data } = x;
  if (x.height % k !== 0 || x.width % k !== 0) throw new RangeError(`a ${x.height}x${x.width} map does not divide into ${k}x${k} patches`);
  const height = x.height / k;
  const width = x.width / k;
  const patches = new Float64Array(height * width * layer.inFeatures);
  let at = 0;
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < width; xx++) {
      for (let ky = 0; ky < k; ky++) {
        const row = ((y * k + ky) * x.width + xx * k) * c; // k pixels side by side: k * c contiguous values
        patches.set(data.subarray(row, row + k * c), at);
        at += k * c;
      }
    }
  }
  return { height, width, channels: layer.outFeatures, data: linear(patches, height * width, layer) };
}

/** AdaptiveAvgPool2d(1) + flatten: the mean of each channel over all pixels. */
function globalAveragePool(x: FeatureMap): Float64Array {
  const { channels: c, data } = x;
  const pixels = x.height * x.width;
  const out = new Float64Array(c);
  for (let p = 0; p < pixels; p++) for (let ch = 0; ch < c; ch++) out[ch]! += data[p * c + ch]!;
  for (let ch = 0; ch < c; ch++) out[ch]! /= pixels;
  return out;
}

/** Linear -> BatchNorm1d (running stats) -> ReLU -> Dropout (identity in eval), repeated; then Linear. */
function runHead(features: Float64Array, head: Head): Float64Array {
  let x = features;
  for (const { linear: layer, norm } of head.hidden) {
    x = linear(x, 1, layer);
    for (let i = 0; i < x.length; i++) {
      const normalized = ((x[i]! - norm.runningMean[i]!) / Math.sqrt(norm.runningVar[i]! + BATCH_NORM_EPS)) * norm.weight[i]! + norm.bias[i]!;
      x[i] = Math.max(normalized, 0);
    }
  }
  return linear(x, 1, head.output);
}

/**
 * `y = x W^T + b` for `rows` rows of `x` (`[rows, in]`), giving `[rows, out]`. Each output is a dot
 * product of two contiguous runs (an activation row, a weight row). Four rows and two outputs are
 * done together, so every value loaded serves several products and eight sums run side by side;
 * leftover rows and outputs take the plain one-by-one loop.
 */
function linear(x: Float64Array, rows: number, layer: Linear): Float64Array {
  const { inFeatures: n, outFeatures: m, weight: w, bias } = layer;
  if (x.length !== rows * n) throw new RangeError(`linear: input has ${x.length} values, expected ${rows} x ${n}`);
  const y = new Float64Array(rows * m);
  let r = 0;
  for (; r + 4 <= rows; r += 4) {
    const x0 = r * n;
    const x1 = x0 + n;
    const x2 = x1 + n;
    const x3 = x2 + n;
    let o = 0;
    for (; o + 2 <= m; o += 2) {
      const w0 = o * n;
      const w1 = w0 + n;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
      for (let k = 0; k < n; k++) {
        const u = w[w0 + k]!;
        const v = w[w1 + k]!;
        const c0 = x[x0 + k]!;
        const c1 = x[x1 + k]!;
        const c2 = x[x2 + k]!;
        const c3 = x[x3 + k]!;
        a0 += c0 * u;
        a1 += c1 * u;
        a2 += c2 * u;
        a3 += c3 * u;
        b0 += c0 * v;
        b1 += c1 * v;
        b2 += c2 * v;
        b3 += c3 * v;
      }
      y[r * m + o] = a0 + bias[o]!;
      y[(r + 1) * m + o] = a1 + bias[o]!;
      y[(r + 2) * m + o] = a2 + bias[o]!;
      y[(r + 3) * m + o] = a3 + bias[o]!;
      y[r * m + o + 1] = b0 + bias[o + 1]!;
      y[(r + 1) * m + o + 1] = b1 + bias[o + 1]!;
      y[(r + 2) * m + o + 1] = b2 + bias[o + 1]!;
      y[(r + 3) * m + o + 1] = b3 + bias[o + 1]!;
    }
    for (; o < m; o++) for (let i = r; i < r + 4; i++) y[i * m + o] = dot(x, i * n, w, o * n, n) + bias[o]!;
  }
  for (; r < rows; r++) for (let o = 0; o < m; o++) y[r * m + o] = dot(x, r * n, w, o * n, n) + bias[o]!;
  return y;
}

function dot(a: Float64Array, aStart: number, b: Float32Array, bStart: number, length: number): number {
  let sum = 0;
  for (let k = 0; k < length; k++) sum += a[aStart + k]! * b[bStart + k]!;
  return sum;
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
 *              (Abramowitz & Stegun 7.1.6): every term positive, so no cancellation; about 10 terms
 *              for the |x| < 1 that GELU mostly sees, 60 near 2.
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

function erfSeries(x: number): number {
  const twoXSquared = 2 * x * x;
  let term = x;
  let sum = x;
  for (let n = 1; term > sum * 1e-17; n++) {
    term *= twoXSquared / (2 * n + 1);
    sum += term;
  }
  return TWO_OVER_SQRT_PI * expMinusSquare(x) * sum;
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
 * rounded to single precision, z * z is exact in double, and x^2 = z^2 + (x - z)(x + z).
 */
function expMinusSquare(x: number): number {
  const z = Math.fround(x);
  return Math.exp(-z * z) * Math.exp(-(x - z) * (x + z));
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

function emptyOutputs(batch: number): ReferenceOutputs {
  return { positions: new Float32Array(batch * OUTPUT_WIDTH), uncertainties: new Float32Array(batch * OUTPUT_WIDTH) };
}

function store(outputs: ReferenceOutputs, index: number, sample: SampleOutputs): void {
  outputs.positions.set(sample.positions, index * OUTPUT_WIDTH);
  outputs.uncertainties.set(sample.uncertainties, index * OUTPUT_WIDTH);
}

/** NCHW planes of one sample to a channels-last map. */
function toChannelsLast(sample: Float32Array, channels: number, height: number, width: number): FeatureMap {
  const data = new Float64Array(sample.length);
  const plane = height * width;
  for (let c = 0; c < channels; c++) for (let p = 0; p < plane; p++) data[p * channels + c] = sample[c * plane + p]!;
  return { height, width, channels, data };
}

/** A row-major tensor of `shape` with its axes reordered (`order[i]` = source axis of output axis i). */
function permute(values: Float32Array, shape: readonly number[], order: readonly number[]): Float32Array {
  const outShape = order.map((axis) => shape[axis]!);
  const strides = shape.map((_, axis) => shape.slice(axis + 1).reduce((a, b) => a * b, 1));
  const out = new Float32Array(values.length);
  const index = new Array<number>(outShape.length).fill(0);
  for (let i = 0; i < out.length; i++) {
    let from = 0;
    for (let axis = 0; axis < order.length; axis++) from += index[axis]! * strides[order[axis]!]!;
    out[i] = values[from]!;
    for (let axis = outShape.length - 1; axis >= 0; axis--) {
      if (++index[axis]! < outShape[axis]!) break;
      index[axis] = 0;
    }
  }
  return out;
}
