import type { LazyTensor } from '../../checkpoint/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import {
  checkUncertaintyRange,
  DEFAULT_UNCERTAINTY_RANGE,
  HEAD_NAMES,
  OUTPUT_WIDTH,
  keys,
  presetName,
  stateDictEntries,
  type LocalizationNetSpec,
} from './architecture.ts';

/**
 * Reads the architecture off the weights themselves: stage dims from the depthwise convolutions,
 * depths by counting blocks, head widths from the Linear shapes. No variant table is consulted, so
 * any ConvNeXt width/depth works; the preset name is only a label.
 */
export function inferArchitecture(
  tensors: ReadonlyMap<string, LazyTensor>,
  config: Readonly<Record<string, unknown>> = {},
): LocalizationNetSpec {
  const stem = tensors.get(`${keys.stemConv}.weight`);
  if (!stem || stem.shape.length !== 4 || stem.shape[1] !== 3) throw unsupported(tensors, `no ConvNeXt stem (${keys.stemConv}.weight [C, 3, 4, 4])`);

  const dims: number[] = [];
  const depths: number[] = [];
  for (let s = 0; tensors.has(`${keys.block(s, 0)}.block.0.weight`); s++) {
    let depth = 0;
    while (tensors.has(`${keys.block(s, depth)}.block.0.weight`)) depth++;
    dims.push(tensors.get(`${keys.block(s, 0)}.block.0.weight`)!.shape[0]!);
    depths.push(depth);
  }
  if (dims.length !== 4) throw unsupported(tensors, `found ${dims.length} ConvNeXt stages, expected 4`);

  // A head is Linear+BatchNorm pairs (BN at 4i+1) then the output Linear at 4n.
  const heads = HEAD_NAMES.map((head) => {
    const hidden: number[] = [];
    for (let layer = 0; tensors.has(`${keys.headNorm(head, layer)}.weight`); layer++) {
      const linear = tensors.get(`${keys.headLinear(head, layer)}.weight`);
      if (!linear) throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `missing ${keys.headLinear(head, layer)}.weight`);
      if (linear.shape.length !== 2) throw unsupported(tensors, `${keys.headLinear(head, layer)}.weight is not a Linear weight`);
      hidden.push(linear.shape[0]!);
    }
    const outputName = `${keys.headLinear(head, hidden.length)}.weight`;
    const output = tensors.get(outputName);
    if (!output) throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `missing ${head} weights (${outputName})`);
    if (output.shape.length !== 2 || output.shape[0] !== OUTPUT_WIDTH) {
      throw unsupported(tensors, `${outputName} has shape [${output.shape.join(', ')}], expected [${OUTPUT_WIDTH}, ${hidden.at(-1) ?? '?'}]`);
    }
    return hidden;
  });

  const spec: LocalizationNetSpec = {
    variant: presetName(dims, depths),
    dims,
    depths,
    positionHidden: heads[0]!,
    uncertaintyHidden: heads[1]!,
    ...uncertaintyRangeFrom(config),
  };
  checkEveryEntry(tensors, spec);
  return spec;
}

/** Every weight the graph needs must be there with the shape the inferred spec implies. */
function checkEveryEntry(tensors: ReadonlyMap<string, LazyTensor>, spec: LocalizationNetSpec): void {
  const missing: string[] = [];
  const mismatched: string[] = [];
  for (const entry of stateDictEntries(spec)) {
    if (entry.kind === 'num_batches_tracked') continue;
    const tensor = tensors.get(entry.name);
    if (!tensor) missing.push(entry.name);
    else if (!sameShape(tensor.shape, entry.shape)) mismatched.push(`${entry.name} [${tensor.shape.join(', ')}] (expected [${entry.shape.join(', ')}])`);
  }
  if (missing.length > 0) {
    throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `missing ${missing.length} weights: ${list(missing)}`);
  }
  if (mismatched.length > 0) {
    throw new HeimdallError(ErrorCodes.UNSUPPORTED_ARCHITECTURE, `weights with unexpected shapes: ${list(mismatched)}`);
  }
}

function unsupported(tensors: ReadonlyMap<string, LazyTensor>, reason: string): HeimdallError {
  // Summarise what was found by module prefix, so the user sees what the checkpoint actually is.
  const prefixes = new Map<string, number>();
  for (const name of tensors.keys()) {
    const prefix = name.split('.').slice(0, 2).join('.');
    prefixes.set(prefix, (prefixes.get(prefix) ?? 0) + 1);
  }
  const found = [...prefixes].slice(0, 10).map(([p, n]) => `${p} (${n})`).join(', ');
  return new HeimdallError(
    ErrorCodes.UNSUPPORTED_ARCHITECTURE,
    `not a LocalizationNet: ${reason}; found ${tensors.size} tensors: ${found || 'none'}${prefixes.size > 10 ? ', ...' : ''}`,
  );
}

/**
 * The clamp range of the uncertainty head from the checkpoint's config (`uncertainty_min`,
 * `uncertainty_max`; defaults when absent), validated (checkUncertaintyRange): INVALID_CONFIG naming
 * the key otherwise.
 */
export function uncertaintyRangeFrom(config: Readonly<Record<string, unknown>>): { uncertaintyMin: number; uncertaintyMax: number } {
  const uncertaintyMin = configNumber(config, 'uncertainty_min') ?? DEFAULT_UNCERTAINTY_RANGE.min;
  const givenMax = configNumber(config, 'uncertainty_max');
  const uncertaintyMax = givenMax ?? DEFAULT_UNCERTAINTY_RANGE.max;
  if (givenMax === undefined && Math.fround(uncertaintyMin) >= Math.fround(uncertaintyMax)) {
    throw invalidConfig('uncertainty_min', `must be below uncertainty_max (not given: ${uncertaintyMax} by default), got ${uncertaintyMin}`);
  }
  checkUncertaintyRange(uncertaintyMin, uncertaintyMax);
  return { uncertaintyMin, uncertaintyMax };
}

/** A decimal number as text (what safetensors metadata, all strings, and YAML-born configs hold): no hex, no "Infinity", no blanks. */
const DECIMAL = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

/**
 * A number the config gives under `key`, or undefined when the key is absent (or None). Numbers are
 * taken as numbers and decimal strings as the number they spell; anything else (booleans, "0x10",
 * lists, objects) is INVALID_CONFIG. Only own properties count: "__proto__" or "constructor" is
 * never found on Object.prototype.
 */
export function configNumber(config: Readonly<Record<string, unknown>>, key: string): number | undefined {
  if (!Object.hasOwn(config, key)) return undefined;
  const value = config[key];
  if (value === undefined || value === null) return undefined;
  let n: number;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'string' && DECIMAL.test(value)) n = Number(value);
  else throw invalidConfig(key, `must be a number, got ${describeValue(value)}`);
  if (!Number.isFinite(n)) throw invalidConfig(key, `must be a finite number, got ${describeValue(value)}`);
  return n;
}

const invalidConfig = (key: string, reason: string) => new HeimdallError(ErrorCodes.INVALID_CONFIG, `config ${key} ${reason}`);

function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (typeof value === 'object' && value !== null) return 'an object';
  return String(value);
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
const list = (items: string[]) => items.slice(0, 8).join(', ') + (items.length > 8 ? `, ... (${items.length - 8} more)` : '');

/** Learnable parameters, counted as `sum(p.numel() for p in model.parameters())` would. */
export function parameterCount(spec: LocalizationNetSpec): number {
  return stateDictEntries(spec)
    .filter((e) => e.kind === 'weight' || e.kind === 'bias' || e.kind === 'layer_scale')
    .reduce((sum, e) => sum + e.shape.reduce((a, b) => a * b, 1), 0);
}
