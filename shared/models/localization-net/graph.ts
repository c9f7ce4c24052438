import type { LazyTensor } from '../../checkpoint/index.ts';
import { GraphBuilder } from '../../onnx/graph-builder.ts';
import { attr, TensorDataType, type AttributeValue, type GraphDef, type InitializerDef } from '../../onnx/model.ts';
import { ColumnQuantizer } from '../../onnx/quantize.ts';
import { Transposer } from '../../onnx/transpose.ts';
import {
  BATCH_NORM_EPS,
  HEAD_NAMES,
  INPUT_NAME,
  INPUT_SHAPE,
  keys,
  LAYER_NORM_EPS,
  OUTPUT_NAMES,
  OUTPUT_WIDTH,
  type LocalizationNetSpec,
} from './architecture.ts';

export const SUPPORTED_OPSETS = [14, 17, 20] as const;
export type Opset = (typeof SUPPORTED_OPSETS)[number];
export const DEFAULT_OPSET: Opset = 14;
/** The IR version released with each opset (onnx/helper.py VERSION_TABLE: 1.9 -> 7/14, 1.12 -> 8/17, 1.15 -> 9/20). */
export const IR_VERSION: Readonly<Record<Opset, number>> = { 14: 7, 17: 8, 20: 9 };
export const BATCH_DIM = 'batch_size';

/**
 * How the graph computes its block Linears: in float32, or (the INT8 variant, DESIGN §3 Variants) on
 * per-channel int8 weights with activations quantized at run time (DynamicQuantizeLinear, MatMulInteger),
 * the graph onnxruntime's quantize_dynamic makes of torch's export and fuses into DynamicQuantizeMatMul.
 */
export type Precision = 'float32' | 'int8';

/**
 * How a node reads a weight (DESIGN §4, canonical graph): `stored` as torch keeps it (Conv,
 * LayerNorm, Mul, Gemm with transB), `transposed` for MatMul (nn.Linear's [out, in] as [in, out]).
 * Every weight enters the graph through `place` with the layout of its consumer and is put in that
 * layout while the writer streams it (weightInitializer), so no Transpose, Identity or Cast node ever
 * reads a weight: this is the one place a weight changes on its way into the file. The INT8 variant
 * adds one more consumer layout: a MatMulInteger's [in, out] int8 matrix with its scales (quantizedWeight).
 */
export type WeightLayout = 'stored' | 'transposed';

/** A float32 tensor to place in the graph: a checkpoint tensor, or one derived from some (a folded head Linear). */
type WeightSource = Pick<LazyTensor, 'shape' | 'readFloat32'>;

/**
 * LocalizationNet as an ONNX graph (DESIGN §4), node for node what torch.onnx.export emits for the
 * eval-mode module, so onnxruntime applies the same fusions (LayerNorm, Gelu), its quantizer and
 * optimizer see the same patterns, and latency matches; BatchNorm1d is folded into the preceding
 * Linear. Weights are read from the checkpoint only when the writer reaches them.
 *
 * In `int8` precision only the blocks' Linears are quantized, as quantize_dynamic(per_channel=True,
 * op_types_to_quantize=['MatMul', 'Gemm']) quantizes torch's graph: they hold nearly all the weights
 * (the 4x smaller file) and the time at batch 1, which reads them from memory. The rest stays float32:
 * quantize_dynamic has no integer Gemm, and the heads' Gemms are a fraction of a percent of the
 * weights whose errors would reach the outputs unaveraged; the depthwise and downsampling convolutions
 * and the LayerNorms are small too.
 */
export function buildLocalizationGraph(spec: LocalizationNetSpec, tensors: ReadonlyMap<string, LazyTensor>, opset: Opset, precision: Precision = 'float32'): GraphDef {
  const g = new GraphBuilder(precision === 'int8' ? 'localization_net_int8' : 'localization_net');
  const transposer = new Transposer();
  const quantizer = new ColumnQuantizer();
  /** `source` as the initializer `name`, in the layout its consumer reads. */
  const place = (name: string, source: WeightSource, layout: WeightLayout) => g.initializer(weightInitializer(name, source, layout, transposer));
  /** A checkpoint tensor, under its state_dict name. */
  const weight = (name: string, layout: WeightLayout = 'stored') => place(name, tensors.get(name)!, layout);
  const eps = opset < 17 ? g.constant('layer_norm.epsilon', [LAYER_NORM_EPS]) : '';
  const two = opset < 17 ? g.constant('layer_norm.two', [2]) : '';
  const sqrt2 = opset < 20 ? g.constant('gelu.sqrt2', [Math.SQRT2]) : '';
  const one = opset < 20 ? g.constant('gelu.one', [1]) : '';
  const half = opset < 20 ? g.constant('gelu.half', [0.5]) : '';

  /** LayerNorm over the last axis; decomposed below opset 17 exactly as torch's symbolic_opset9.native_layer_norm. */
  const layerNorm = (x: string, prefix: string) => {
    const scale = weight(`${prefix}.weight`);
    const bias = weight(`${prefix}.bias`);
    if (opset >= 17) {
      return g.node('LayerNormalization', [x, scale, bias], { scope: prefix, attributes: { axis: attr.int(-1), epsilon: attr.float(LAYER_NORM_EPS) } });
    }
    const axes = { axes: attr.ints([-1]) };
    const mean = g.node('ReduceMean', [x], { scope: prefix, attributes: axes });
    const centered = g.node('Sub', [x, mean], { scope: prefix });
    const variance = g.node('ReduceMean', [g.node('Pow', [centered, two], { scope: prefix })], { scope: prefix, attributes: axes });
    const std = g.node('Sqrt', [g.node('Add', [variance, eps], { scope: prefix })], { scope: prefix });
    const normalized = g.node('Div', [centered, std], { scope: prefix });
    return g.node('Add', [g.node('Mul', [normalized, scale], { scope: prefix }), bias], { scope: prefix });
  };
  /** ConvNeXt's LayerNorm2d: channels-last LayerNorm between two permutes. */
  const layerNorm2d = (x: string, prefix: string) => {
    const nhwc = g.node('Transpose', [x], { scope: prefix, attributes: { perm: attr.ints([0, 2, 3, 1]) } });
    return g.node('Transpose', [layerNorm(nhwc, prefix)], { scope: prefix, attributes: { perm: attr.ints([0, 3, 1, 2]) } });
  };
  /** Exact (erf) GELU; decomposed below opset 20 as torch's symbolic_opset9.gelu. */
  const gelu = (x: string, scope: string) => {
    if (opset >= 20) return g.node('Gelu', [x], { scope, attributes: { approximate: attr.string('none') } });
    const erf = g.node('Erf', [g.node('Div', [x, sqrt2], { scope })], { scope });
    return g.node('Mul', [g.node('Mul', [x, g.node('Add', [erf, one], { scope })], { scope }), half], { scope });
  };
  /** nn.Linear on a channels-last tensor, as torch.onnx.export writes it: MatMul by the [in, out] weight, then Add. */
  const linear = (x: string, prefix: string) => {
    const product = precision === 'int8' ? quantizedMatMul(x, prefix) : g.node('MatMul', [x, weight(`${prefix}.weight`, 'transposed')], { scope: prefix });
    return g.node('Add', [product, weight(`${prefix}.bias`)], { scope: prefix });
  };
  /**
   * x @ W on int8 weights, node for node what quantize_dynamic writes for a MatMul (its
   * operators/matmul.py MatMulInteger): x quantized to uint8 at run time, the integer product, then
   * scaled back by x's scale times W's per-column scales.
   */
  const quantizedMatMul = (x: string, prefix: string) => {
    const [xq, xScale, xZeroPoint] = g.nodeOutputs('DynamicQuantizeLinear', [x], { scope: prefix, outputs: 3 });
    const w = quantizedWeight(`${prefix}.weight`, tensors.get(`${prefix}.weight`)!, transposer, quantizer).map((init) => g.initializer(init));
    const product = g.node('MatMulInteger', [xq!, w[0]!, xZeroPoint!, w[2]!], { scope: prefix });
    const scale = g.node('Mul', [xScale!, w[1]!], { scope: prefix });
    return g.node('Mul', [g.node('Cast', [product], { scope: prefix, attributes: { to: attr.int(TensorDataType.FLOAT) } }), scale], { scope: prefix });
  };
  const conv = (x: string, prefix: string, attributes: Record<string, AttributeValue>) =>
    g.node('Conv', [x, weight(`${prefix}.weight`), weight(`${prefix}.bias`)], { scope: prefix, attributes });

  const input = g.input(INPUT_NAME, TensorDataType.FLOAT, [BATCH_DIM, ...INPUT_SHAPE]);
  let x = conv(input, keys.stemConv, { kernel_shape: attr.ints([4, 4]), strides: attr.ints([4, 4]) });
  x = layerNorm2d(x, keys.stemNorm);
  spec.dims.forEach((dim, s) => {
    if (s > 0) {
      x = layerNorm2d(x, keys.downsampleNorm(s));
      x = conv(x, keys.downsampleConv(s), { kernel_shape: attr.ints([2, 2]), strides: attr.ints([2, 2]) });
    }
    for (let b = 0; b < spec.depths[s]!; b++) {
      const block = keys.block(s, b);
      const residual = x;
      let y = conv(x, `${block}.block.0`, {
        group: attr.int(dim),
        kernel_shape: attr.ints([7, 7]),
        pads: attr.ints([3, 3, 3, 3]),
      });
      y = g.node('Transpose', [y], { scope: block, attributes: { perm: attr.ints([0, 2, 3, 1]) } });
      y = layerNorm(y, `${block}.block.2`);
      y = gelu(linear(y, `${block}.block.3`), `${block}.block.4`);
      y = linear(y, `${block}.block.5`);
      y = g.node('Transpose', [y], { scope: block, attributes: { perm: attr.ints([0, 3, 1, 2]) } });
      y = g.node('Mul', [weight(`${block}.layer_scale`), y], { scope: block });
      x = g.node('Add', [y, residual], { scope: block });
    }
  });
  const pooled = g.node('GlobalAveragePool', [x], { scope: 'backbone.1' });
  const features = g.node('Flatten', [pooled], { scope: 'flatten', attributes: { axis: attr.int(1) } });

  HEAD_NAMES.forEach((head, h) => {
    const hidden = head === 'position_head' ? spec.positionHidden : spec.uncertaintyHidden;
    let y = features;
    hidden.forEach((_, layer) => {
      const prefix = keys.headLinear(head, layer);
      const folded = foldBatchNorm(tensors, prefix, keys.headNorm(head, layer));
      const [w, b] = [place(`${prefix}.weight.folded`, folded.weight, 'stored'), place(`${prefix}.bias.folded`, folded.bias, 'stored')];
      y = g.node('Gemm', [y, w, b], { scope: prefix, attributes: { transB: attr.int(1) } });
      y = g.node('Relu', [y], { scope: `${head}.${layer * 4 + 2}` });
    });
    const last = keys.headLinear(head, hidden.length);
    y = g.node('Gemm', [y, weight(`${last}.weight`), weight(`${last}.bias`)], { scope: last, attributes: { transB: attr.int(1) } });
    if (head === 'uncertainty_head') {
      const low = g.constant('uncertainty.min', [spec.uncertaintyMin]);
      const high = g.constant('uncertainty.max', [spec.uncertaintyMax]);
      y = g.node('Clip', [g.node('Softplus', [y], { scope: 'uncertainty' }), low, high], { scope: 'uncertainty' });
    }
    g.output(y, OUTPUT_NAMES[h]!, TensorDataType.FLOAT, [BATCH_DIM, OUTPUT_WIDTH]);
  });
  return g.build();
}

/**
 * Eval-mode BatchNorm1d after a Linear is an affine map, so it folds into the Linear (in float64):
 * W' = W * s, b' = (b - mean) * s + beta, with s = gamma / sqrt(var + eps).
 */
function foldBatchNorm(tensors: ReadonlyMap<string, LazyTensor>, linear: string, norm: string): { weight: WeightSource; bias: WeightSource } {
  const get = (name: string) => tensors.get(name)!.readFloat32();
  const [out, inFeatures] = tensors.get(`${linear}.weight`)!.shape as [number, number];
  const scale = async () => {
    const [gamma, variance] = await Promise.all([get(`${norm}.weight`), get(`${norm}.running_var`)]);
    return Float64Array.from(gamma, (g, i) => g / Math.sqrt(variance[i]! + BATCH_NORM_EPS));
  };
  return {
    weight: {
      shape: [out, inFeatures],
      readFloat32: async () => {
        const [w, s] = await Promise.all([get(`${linear}.weight`), scale()]);
        return Float32Array.from(w, (v, i) => v * s[Math.floor(i / inFeatures)]!);
      },
    },
    bias: {
      shape: [out],
      readFloat32: async () => {
        const [b, mean, beta, s] = await Promise.all([get(`${linear}.bias`), get(`${norm}.running_mean`), get(`${norm}.bias`), scale()]);
        return Float32Array.from(b, (v, i) => (v - mean[i]!) * s[i]! + beta[i]!);
      },
    },
  };
}

/**
 * `source` as an initializer in `layout`, its bytes produced when the writer reaches it (into the
 * writer's scratch buffer). A transposed weight is named `<name>.transposed`: its dims are not torch's.
 */
function weightInitializer(name: string, source: WeightSource, layout: WeightLayout, transposer: Transposer): InitializerDef {
  const byteLength = source.shape.reduce((a, b) => a * b, 1) * 4;
  switch (layout) {
    case 'stored':
      return {
        name,
        dataType: TensorDataType.FLOAT,
        dims: source.shape,
        byteLength,
        data: async (scratch) => {
          const v = await source.readFloat32(scratch);
          return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
        },
      };
    case 'transposed': {
      const [rows, cols] = source.shape as [number, number];
      return {
        name: `${name}.transposed`,
        dataType: TensorDataType.FLOAT,
        dims: [cols, rows],
        byteLength,
        data: (scratch) => transposer.transpose((buffer) => source.readFloat32(buffer), rows, cols, scratch),
      };
    }
  }
}

/**
 * `source` (torch's [out, in] Linear weight) as a MatMulInteger reads it: the [in, out] transpose
 * quantized by column (shared/onnx/quantize.ts), then its scales and zero points, in that order. The
 * scales are known once the matrix is quantized, and the writer asks for each initializer's bytes
 * only after the one before it, so they come from that quantization.
 */
function quantizedWeight(name: string, source: WeightSource, transposer: Transposer, quantizer: ColumnQuantizer): [InitializerDef, InitializerDef, InitializerDef] {
  const [rows, cols] = source.shape as [number, number];
  let scales: Float32Array | undefined;
  const quantized: InitializerDef = {
    name: `${name}.transposed.quantized`,
    dataType: TensorDataType.INT8,
    dims: [cols, rows],
    byteLength: rows * cols,
    data: async (scratch) => {
      const out = scratch ? new Int8Array(scratch.buffer, scratch.byteOffset, rows * cols) : new Int8Array(rows * cols);
      // The transpose is made straight into the quantizer's memory.
      scales = await quantizer.quantize((buffer) => transposer.transpose((b) => source.readFloat32(b), rows, cols, buffer), cols, rows, out);
      return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    },
  };
  const scale: InitializerDef = {
    name: `${name}.transposed.scale`,
    dataType: TensorDataType.FLOAT,
    dims: [rows],
    byteLength: rows * 4,
    data: async () => {
      if (!scales) throw new Error(`the scales of ${name} are asked for before its quantized matrix`);
      return new Uint8Array(scales.buffer, scales.byteOffset, scales.byteLength);
    },
  };
  const zeroPoint: InitializerDef = { name: `${name}.transposed.zero_point`, dataType: TensorDataType.INT8, dims: [rows], byteLength: rows, data: async () => new Uint8Array(rows) };
  return [quantized, scale, zeroPoint];
}

