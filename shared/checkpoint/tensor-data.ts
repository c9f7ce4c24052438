import { DTYPE_BYTES, type DType } from './types.ts';

/** Converts raw little-endian element bytes of any float dtype to float32. */
export function toFloat32(bytes: Uint8Array, dtype: DType): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'float32':
      return bytes.byteOffset % 4 === 0
        ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
        : new Float32Array(bytes.slice().buffer);
    case 'float64': {
      const out = new Float32Array(bytes.byteLength / 8);
      for (let i = 0; i < out.length; i++) out[i] = view.getFloat64(i * 8, true);
      return out;
    }
    case 'float16': {
      const out = new Float32Array(bytes.byteLength / 2);
      for (let i = 0; i < out.length; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
      return out;
    }
    case 'bfloat16': {
      // bfloat16 is the high half of a float32.
      const out = new Float32Array(bytes.byteLength / 2);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < out.length; i++) bits[i] = view.getUint16(i * 2, true) << 16;
      return out;
    }
    case 'int64': {
      const out = new Float32Array(bytes.byteLength / 8);
      for (let i = 0; i < out.length; i++) out[i] = Number(view.getBigInt64(i * 8, true));
      return out;
    }
    case 'int32': {
      const out = new Float32Array(bytes.byteLength / 4);
      for (let i = 0; i < out.length; i++) out[i] = view.getInt32(i * 4, true);
      return out;
    }
    case 'int16': {
      const out = new Float32Array(bytes.byteLength / 2);
      for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true);
      return out;
    }
    case 'int8':
      return Float32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    case 'uint8':
    case 'bool':
      return Float32Array.from(bytes);
  }
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/**
 * Copies a strided view (PyTorch's size/stride/offset, in elements) into a contiguous row-major array.
 * `source` need only hold the view's own span (TorchTensor reads just that, with `offset` 0); bounds
 * and sizes were checked when the tensor was rebuilt (torch-zip.ts), so the output is at most the span.
 */
export function gatherStrided(
  source: Uint8Array,
  itemSize: number,
  offset: number,
  shape: readonly number[],
  stride: readonly number[],
): Uint8Array {
  const numel = shape.reduce((a, b) => a * b, 1);
  const contiguous = isContiguous(shape, stride);
  if (contiguous) return source.subarray(offset * itemSize, (offset + numel) * itemSize);
  const out = new Uint8Array(numel * itemSize);
  const index = new Array<number>(shape.length).fill(0);
  for (let n = 0; n < numel; n++) {
    let element = offset;
    for (let d = 0; d < shape.length; d++) element += index[d]! * stride[d]!;
    out.set(source.subarray(element * itemSize, (element + 1) * itemSize), n * itemSize);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++index[d]! < shape[d]!) break;
      index[d] = 0;
    }
  }
  return out;
}

export function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d]!;
  }
  return true;
}

/** The first element of raw little-endian bytes at the dtype's own precision (a float64 metric stays float64; bool as 0 or 1). */
export function scalarOf(bytes: Uint8Array, dtype: DType): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'float64':
      return view.getFloat64(0, true);
    case 'int64':
      return Number(view.getBigInt64(0, true));
    case 'int32':
      return view.getInt32(0, true);
    default:
      return toFloat32(bytes.subarray(0, DTYPE_BYTES[dtype]), dtype)[0]!;
  }
}
