/**
 * LocalizationNet's shape: a torchvision ConvNeXt backbone (`children()[:-1]`, i.e. features +
 * avgpool, under `backbone.`) and two heads (Linear-BatchNorm1d-ReLU-Dropout twice, then Linear).
 * This module names the parameters exactly as PyTorch's state_dict does; it is the one place that
 * knows the key layout, shared by architecture inference, the graph builder and the sample writer.
 */

import { ErrorCodes, HeimdallError } from '../../errors/index.ts';

export interface LocalizationNetSpec {
  /** `tiny`, `small`, `base`, `large`, or `custom` when the dims/depths match no torchvision preset. */
  readonly variant: string;
  /** Channels of the four ConvNeXt stages. */
  readonly dims: readonly number[];
  /** Blocks per stage. */
  readonly depths: readonly number[];
  /** Hidden widths of the position head's two Linear-BatchNorm layers. */
  readonly positionHidden: readonly number[];
  /** Hidden widths of the uncertainty head's two Linear-BatchNorm layers. */
  readonly uncertaintyHidden: readonly number[];
  readonly uncertaintyMin: number;
  readonly uncertaintyMax: number;
}

/** torchvision's ConvNeXt presets; used to name an inferred architecture, never to infer it. */
export const CONVNEXT_PRESETS: Readonly<Record<string, { dims: number[]; depths: number[] }>> = {
  tiny: { dims: [96, 192, 384, 768], depths: [3, 3, 9, 3] },
  small: { dims: [96, 192, 384, 768], depths: [3, 3, 27, 3] },
  base: { dims: [128, 256, 512, 1024], depths: [3, 3, 27, 3] },
  large: { dims: [192, 384, 768, 1536], depths: [3, 3, 27, 3] },
};

export const DEFAULT_UNCERTAINTY_RANGE = { min: 0.01, max: 1.0 } as const;

/**
 * The uncertainty clamp range must be a real range of positive values in the model's float32:
 * `0 < min < max`, both finite, and still so once rounded to float32 (the graph's constants):
 * 1e-50 rounds to 0, 1e39 to Infinity, and 1 + 1e-12 to 1. INVALID_CONFIG naming the key otherwise.
 */
export function checkUncertaintyRange(min: number, max: number): void {
  const fail = (key: string, reason: string) => new HeimdallError(ErrorCodes.INVALID_CONFIG, `config ${key} ${reason}`);
  const [min32, max32] = [Math.fround(min), Math.fround(max)];
  if (!Number.isFinite(min) || !Number.isFinite(min32)) throw fail('uncertainty_min', `must be finite in float32, got ${min}`);
  if (!Number.isFinite(max) || !Number.isFinite(max32)) throw fail('uncertainty_max', `must be finite in float32, got ${max}`);
  if (!(min32 > 0)) throw fail('uncertainty_min', `must be greater than 0 (in float32), got ${min}`);
  if (!(max32 > min32)) throw fail('uncertainty_max', `must be greater than uncertainty_min (${min}) in float32, got ${max}`);
}
export const DEFAULT_HEAD_HIDDEN = [256, 128] as const;

/** Model I/O contract (DESIGN §4). */
export const INPUT_NAME = 'mel_spectrogram';
export const INPUT_SHAPE = [3, 128, 32] as const;
export const OUTPUT_NAMES = ['positions', 'uncertainties'] as const;
export const OUTPUT_WIDTH = 2;
export const HEAD_NAMES = ['position_head', 'uncertainty_head'] as const;

/** ConvNeXt's LayerNorm and BatchNorm1d epsilons (torchvision and torch defaults). */
export const LAYER_NORM_EPS = 1e-6;
export const BATCH_NORM_EPS = 1e-5;

/** Index of stage `s` (0..3) and of the downsampler before stage `s` (1..3) inside `backbone.0`. */
export const stageIndex = (s: number): number => 1 + 2 * s;
export const downsampleIndex = (s: number): number => 2 * s;

export const keys = {
  stemConv: 'backbone.0.0.0',
  stemNorm: 'backbone.0.0.1',
  downsampleNorm: (s: number) => `backbone.0.${downsampleIndex(s)}.0`,
  downsampleConv: (s: number) => `backbone.0.${downsampleIndex(s)}.1`,
  block: (s: number, b: number) => `backbone.0.${stageIndex(s)}.${b}`,
  /** Head layer `i` of the Sequential: 0 and 4 are Linear+BatchNorm pairs (BN at i+1), 8 the output Linear. */
  headLinear: (head: string, layer: number) => `${head}.${layer * 4}`,
  headNorm: (head: string, layer: number) => `${head}.${layer * 4 + 1}`,
} as const;

export function presetName(dims: readonly number[], depths: readonly number[]): string {
  for (const [name, preset] of Object.entries(CONVNEXT_PRESETS)) {
    if (sameNumbers(preset.dims, dims) && sameNumbers(preset.depths, depths)) return name;
  }
  return 'custom';
}

export function specForVariant(
  variant: string,
  options: Partial<Omit<LocalizationNetSpec, 'variant' | 'dims' | 'depths'>> = {},
): LocalizationNetSpec {
  const preset = CONVNEXT_PRESETS[variant];
  if (!preset) throw new Error(`unknown variant ${variant}; expected one of ${Object.keys(CONVNEXT_PRESETS).join(', ')}`);
  checkUncertaintyRange(options.uncertaintyMin ?? DEFAULT_UNCERTAINTY_RANGE.min, options.uncertaintyMax ?? DEFAULT_UNCERTAINTY_RANGE.max);
  return {
    variant,
    dims: preset.dims,
    depths: preset.depths,
    positionHidden: options.positionHidden ?? DEFAULT_HEAD_HIDDEN,
    uncertaintyHidden: options.uncertaintyHidden ?? DEFAULT_HEAD_HIDDEN,
    uncertaintyMin: options.uncertaintyMin ?? DEFAULT_UNCERTAINTY_RANGE.min,
    uncertaintyMax: options.uncertaintyMax ?? DEFAULT_UNCERTAINTY_RANGE.max,
  };
}

export type ParameterKind = 'weight' | 'bias' | 'layer_scale' | 'running_mean' | 'running_var' | 'num_batches_tracked';

export interface ParameterEntry {
  readonly name: string;
  readonly shape: readonly number[];
  readonly kind: ParameterKind;
  /** `int64` only for BatchNorm's num_batches_tracked. */
  readonly dtype: 'float32' | 'int64';
}

/** Every state_dict entry of the model, in PyTorch's order. */
export function stateDictEntries(spec: LocalizationNetSpec): ParameterEntry[] {
  const out: ParameterEntry[] = [];
  const add = (name: string, shape: number[], kind: ParameterKind = name.endsWith('bias') ? 'bias' : 'weight') =>
    out.push({ name, shape, kind, dtype: kind === 'num_batches_tracked' ? 'int64' : 'float32' });
  const [c0] = spec.dims as [number];
  add(`${keys.stemConv}.weight`, [c0, 3, 4, 4]);
  add(`${keys.stemConv}.bias`, [c0]);
  add(`${keys.stemNorm}.weight`, [c0]);
  add(`${keys.stemNorm}.bias`, [c0]);
  spec.dims.forEach((dim, s) => {
    if (s > 0) {
      const previous = spec.dims[s - 1]!;
      add(`${keys.downsampleNorm(s)}.weight`, [previous]);
      add(`${keys.downsampleNorm(s)}.bias`, [previous]);
      add(`${keys.downsampleConv(s)}.weight`, [dim, previous, 2, 2]);
      add(`${keys.downsampleConv(s)}.bias`, [dim]);
    }
    for (let b = 0; b < spec.depths[s]!; b++) {
      const block = keys.block(s, b);
      add(`${block}.layer_scale`, [dim, 1, 1], 'layer_scale');
      add(`${block}.block.0.weight`, [dim, 1, 7, 7]);
      add(`${block}.block.0.bias`, [dim]);
      add(`${block}.block.2.weight`, [dim]);
      add(`${block}.block.2.bias`, [dim]);
      add(`${block}.block.3.weight`, [4 * dim, dim]);
      add(`${block}.block.3.bias`, [4 * dim]);
      add(`${block}.block.5.weight`, [dim, 4 * dim]);
      add(`${block}.block.5.bias`, [dim]);
    }
  });
  const features = spec.dims[spec.dims.length - 1]!;
  HEAD_NAMES.forEach((head) => {
    const hidden = head === 'position_head' ? spec.positionHidden : spec.uncertaintyHidden;
    let width = features;
    hidden.forEach((h, layer) => {
      add(`${keys.headLinear(head, layer)}.weight`, [h, width]);
      add(`${keys.headLinear(head, layer)}.bias`, [h]);
      const norm = keys.headNorm(head, layer);
      add(`${norm}.weight`, [h]);
      add(`${norm}.bias`, [h]);
      add(`${norm}.running_mean`, [h], 'running_mean');
      add(`${norm}.running_var`, [h], 'running_var');
      add(`${norm}.num_batches_tracked`, [], 'num_batches_tracked');
      width = h;
    });
    add(`${keys.headLinear(head, hidden.length)}.weight`, [OUTPUT_WIDTH, width]);
    add(`${keys.headLinear(head, hidden.length)}.bias`, [OUTPUT_WIDTH]);
  });
  return out;
}

function sameNumbers(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
