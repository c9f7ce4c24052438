import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { TorchTensor } from './torch-zip.ts';
import { OpaqueObject, type PickleValue } from './unpickler.ts';

/**
 * The most values a config may expand to. The pickle shares objects by memo reference, so a few KB
 * can describe a DAG that a tree walk turns into 10^9 values; real hyper-parameters are tens to
 * thousands of values.
 */
export const MAX_CONFIG_VALUES = 100_000;
const MAX_CONFIG_DEPTH = 16;

export interface PlainOptions {
  /** What the value is, for the error: "config" unless told. */
  readonly label?: string;
  /** What a tensor becomes (dropped when this is absent or returns undefined). */
  readonly tensor?: (tensor: TorchTensor) => unknown;
}

/**
 * Pickled data (dicts, inert AttributeDicts, lists, scalars) as plain JSON-like data, at most
 * MAX_CONFIG_VALUES values (INVALID_CONFIG beyond) and MAX_CONFIG_DEPTH levels; anything else (bytes,
 * sets, tensors unless `options.tensor` says) is left out. `where` names the value in the error.
 */
export function toPlain(value: PickleValue | undefined, where: string, options: PlainOptions = {}): Record<string, unknown> {
  let budget = MAX_CONFIG_VALUES;
  const convert = (v: PickleValue | undefined, depth: number, path: string): unknown => {
    if (--budget < 0) {
      throw new HeimdallError(ErrorCodes.INVALID_CONFIG, `${options.label ?? 'config'} ${path} expands to more than ${MAX_CONFIG_VALUES} values (shared references in the pickle?)`);
    }
    if (depth > MAX_CONFIG_DEPTH) return undefined;
    if (v instanceof OpaqueObject) return v.items.size > 0 ? convert(v.items, depth + 1, path) : `<${v.global}>`;
    if (v instanceof Map) {
      const out: Record<string, unknown> = {};
      for (const [k, item] of v) {
        const key = String(k);
        // Own properties even for a key like "__proto__" (an assignment would set the prototype).
        Object.defineProperty(out, key, { value: convert(item, depth + 1, `${path}.${key}`), enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
    if (Array.isArray(v)) return v.map((item, i) => convert(item, depth + 1, `${path}[${i}]`));
    if (typeof v === 'bigint') return v.toString();
    if (v instanceof TorchTensor) return options.tensor?.(v);
    if (v instanceof Uint8Array || v instanceof Set || typeof v === 'function') return undefined;
    if (v !== null && typeof v === 'object') return undefined;
    return v;
  };
  const plain = convert(value, 0, where);
  return plain && typeof plain === 'object' && !Array.isArray(plain) ? (plain as Record<string, unknown>) : {};
}
