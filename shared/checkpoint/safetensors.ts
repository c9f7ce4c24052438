import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import type { RandomAccessFile } from './random-access-file.ts';
import { toFloat32 } from './tensor-data.ts';
import { DTYPE_BYTES, type DType, type LazyTensor } from './types.ts';

/**
 * safetensors (https://github.com/huggingface/safetensors, README "Format"): u64 header length, a JSON
 * header of `{name: {dtype, shape, data_offsets}}` plus optional `__metadata__`, then the byte buffer.
 * Validated as the reference implementation does: header size cap, offsets inside the buffer, no
 * overlaps or gaps, and the buffer ending exactly at the file's end.
 */

/** The reference implementation's cap (safetensors/src/tensor.rs MAX_HEADER_SIZE). */
export const MAX_HEADER_BYTES = 100_000_000;

const DTYPES: Record<string, DType> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  F64: 'float64',
  I64: 'int64',
  I32: 'int32',
  I16: 'int16',
  I8: 'int8',
  U8: 'uint8',
  BOOL: 'bool',
};

const invalid = (message: string) => new HeimdallError(ErrorCodes.SAFETENSORS_INVALID, message);

export interface SafetensorsFile {
  readonly tensors: Map<string, LazyTensor>;
  readonly metadata: Record<string, string>;
}

export async function readSafetensors(file: RandomAccessFile): Promise<SafetensorsFile> {
  if (file.size < 8) throw invalid(`file of ${file.size} bytes is too short for a header`);
  const headerLength = Number(new DataView((await file.read(0, 8)).buffer).getBigUint64(0, true));
  if (headerLength > MAX_HEADER_BYTES) throw invalid(`header of ${headerLength} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (8 + headerLength > file.size) throw invalid(`header of ${headerLength} bytes runs past the end of the file (truncated?)`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(await file.read(8, headerLength)));
  } catch {
    throw invalid('header is not valid UTF-8 JSON');
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw invalid('header is not a JSON object');

  const dataStart = 8 + headerLength;
  const dataLength = file.size - dataStart;
  const entries: Array<{ name: string; dtype: DType; shape: number[]; begin: number; end: number }> = [];
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(raw);
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = DTYPES[String(info?.dtype)];
    if (!dtype) throw invalid(`tensor ${name} has unsupported dtype ${String(info?.dtype)}`);
    const shape = info.shape;
    const offsets = info.data_offsets;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw invalid(`tensor ${name} has an invalid shape`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw invalid(`tensor ${name} has invalid data_offsets`);
    }
    const [begin, end] = offsets as [number, number];
    const expected = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (end < begin || end - begin !== expected) {
      throw invalid(`tensor ${name}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, shape needs ${expected}`);
    }
    if (end > dataLength) throw invalid(`tensor ${name} ends at ${end}, past the ${dataLength}-byte buffer (truncated?)`);
    entries.push({ name, dtype, shape: shape as number[], begin, end });
  }

  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const entry of sorted) {
    if (entry.begin < cursor) throw invalid(`tensor ${entry.name} overlaps the tensor before it (offset ${entry.begin} < ${cursor})`);
    if (entry.begin > cursor) throw invalid(`gap of ${entry.begin - cursor} bytes before tensor ${entry.name}`);
    cursor = entry.end;
  }
  if (cursor !== dataLength) throw invalid(`${dataLength - cursor} trailing bytes after the last tensor`);

  const tensors = new Map<string, LazyTensor>();
  for (const entry of entries) {
    tensors.set(entry.name, {
      dtype: entry.dtype,
      shape: entry.shape,
      numel: entry.shape.reduce((a, b) => a * b, 1),
      readFloat32: async (scratch) => toFloat32(await file.read(dataStart + entry.begin, entry.end - entry.begin, scratch), entry.dtype),
    });
  }
  return { tensors, metadata };
}

function parseMetadata(raw: unknown): Record<string, string> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalid('__metadata__ is not an object');
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw)) {
    if (typeof value !== 'string') throw invalid(`__metadata__.${key} is not a string`);
    out[key] = value;
  }
  return out;
}
