import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { toPlain } from './plain-data.ts';
import { RandomAccessFile } from './random-access-file.ts';
import { readSafetensors } from './safetensors.ts';
import { checkTensorsBacked, readTorchArchive, storageEntries, TorchTensor } from './torch-zip.ts';
import { readTrainerState } from './trainer-state.ts';
import { readerError, type Checkpoint, type CheckpointLayout, type LazyTensor } from './types.ts';
import { describe, type PickleValue } from './unpickler.ts';
import { ZIP_MAGIC } from './zip-reader.ts';

export type { Checkpoint, CheckpointFormat, CheckpointLayout, DType, LazyTensor } from './types.ts';
export { MAX_CONFIG_VALUES } from './plain-data.ts';

/** Opens a checkpoint lazily: reads its index (zip directory and pickle, or safetensors header) and nothing else. */
export async function openCheckpoint(path: string): Promise<Checkpoint> {
  const file = await RandomAccessFile.open(path);
  try {
    return await openFormat(path, file);
  } catch (error) {
    await file.close().catch(() => undefined);
    // Every fault of the content is one of our non-retriable codes, whatever raised it.
    throw readerError(error, ErrorCodes.CHECKPOINT_CORRUPT);
  }
}

async function openFormat(path: string, file: RandomAccessFile): Promise<Checkpoint> {
  const magic = await file.read(0, Math.min(8, file.size));
  if (ZIP_MAGIC.every((b, i) => magic[i] === b)) return await fromTorchZip(file);
  if (magic[0] === 0x80 && magic[1] !== undefined && magic[1] <= 5) {
    throw new HeimdallError(
      ErrorCodes.UNSUPPORTED_FORMAT,
      'legacy (pre-1.6, non-zip) torch checkpoint; re-save it with a current torch.save',
    );
  }
  // safetensors: an 8-byte header length, then the JSON header.
  if (file.size >= 9 && (await file.read(8, 1))[0] === 0x7b /* { */) return await fromSafetensors(file);
  throw new HeimdallError(ErrorCodes.UNSUPPORTED_FORMAT, `${path} is neither a torch zip checkpoint nor safetensors`);
}

async function fromSafetensors(file: RandomAccessFile): Promise<Checkpoint> {
  const { tensors, metadata } = await readSafetensors(file);
  return { format: 'safetensors', layout: 'safetensors', tensors, config: metadata, trainerState: {}, warnings: [], close: () => file.close() };
}

async function fromTorchZip(file: RandomAccessFile): Promise<Checkpoint> {
  const { root, inertTypes, zip } = await readTorchArchive(file);
  const warnings = inertTypes.map((g) => `${g} (an inert trainer type) read as plain data`);
  const { layout, stateDict, config } = locateStateDict(root);
  const parity = root instanceof Map && root.get('parity') instanceof Map ? tensorMap(root.get('parity') as Map<PickleValue, PickleValue>, 'parity') : undefined;
  const tensors = stripWrapperPrefix(tensorMap(stateDict, 'state dict'));
  // What a file claims is checked against what it holds (DESIGN §4 Bounds).
  checkTensorsBacked(tensors, file.size, 'state dict');
  if (parity) checkTensorsBacked(parity, file.size, 'parity');
  // A bare state dict holds nothing but its tensors.
  const trainerState = layout === 'bare' ? {} : await lineageOrNothing(root as Map<PickleValue, PickleValue>, warnings);
  return {
    format: 'torch-zip',
    layout,
    tensors,
    config,
    trainerState,
    ...(parity ? { parity } : {}),
    warnings,
    deferRecordChecks: () => zip.deferChecks(storageEntries(tensors.values())),
    close: () => file.close(),
  };
}

/**
 * The trainer's state, or nothing with a warning when it is too large to read as plain data (a
 * per-step loss history in `metrics`): lineage is worth a line, not the export of a valid model.
 */
async function lineageOrNothing(root: Map<PickleValue, PickleValue>, warnings: string[]): Promise<Record<string, unknown>> {
  try {
    return await readTrainerState(root);
  } catch (error) {
    if (!(error instanceof HeimdallError && error.code === ErrorCodes.INVALID_CONFIG)) throw error;
    warnings.push(`training metadata left out: ${error.message}`);
    return {};
  }
}

/** Finds the model weights in the layouts trainers write (DESIGN §4). */
function locateStateDict(root: PickleValue): {
  layout: CheckpointLayout;
  stateDict: Map<PickleValue, PickleValue>;
  config: Record<string, unknown>;
} {
  if (!(root instanceof Map)) throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `checkpoint holds a ${describe(root)}, not a dict`);
  const nested = (key: string) => {
    const value = root.get(key);
    if (value === undefined) return undefined;
    if (!(value instanceof Map)) throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `${key} is a ${describe(value)}, not a dict of tensors`);
    return value;
  };
  const lightning = nested('state_dict');
  if (lightning) return { layout: 'lightning', stateDict: lightning, config: toPlain(root.get('hyper_parameters'), 'hyper_parameters') };
  const wrapped = nested('model_state_dict');
  if (wrapped) return { layout: 'model_state_dict', stateDict: wrapped, config: toPlain(root.get('config'), 'config') };
  const tensorCount = [...root.values()].filter((v) => v instanceof TorchTensor).length;
  if (tensorCount > 0) return { layout: 'bare', stateDict: root, config: {} };
  const keys = [...root.keys()].map(String).slice(0, 12).join(', ');
  throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `no state dict found (top-level keys: ${keys || 'none'})`);
}

function tensorMap(map: Map<PickleValue, PickleValue>, where: string): Map<string, LazyTensor> {
  const out = new Map<string, LazyTensor>();
  for (const [key, value] of map) {
    if (typeof key !== 'string') throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `${where} has a non-string key ${describe(key)}`);
    if (!(value instanceof TorchTensor)) {
      throw new HeimdallError(ErrorCodes.INVALID_STATE_DICT, `${where} entry ${key} is a ${describe(value)} where a tensor belongs`);
    }
    out.set(key, value);
  }
  return out;
}

/** Lightning wraps the model as `self.model` (`model.` prefix); DataParallel adds `module.`. */
function stripWrapperPrefix(tensors: Map<string, LazyTensor>): Map<string, LazyTensor> {
  for (const prefix of ['model.', 'module.']) {
    const names = [...tensors.keys()];
    if (names.length > 0 && names.every((n) => n.startsWith(prefix))) {
      return stripWrapperPrefix(new Map(names.map((n) => [n.slice(prefix.length), tensors.get(n)!])));
    }
  }
  return tensors;
}
