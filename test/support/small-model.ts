import { writeFile } from 'node:fs/promises';
import { pyDict, pyOrderedDict, tensor, type PickleValue } from '../../shared/checkpoint/pickle-writer.ts';
import { writeTorchCheckpoint } from '../../shared/checkpoint/torch-writer.ts';
import type { LocalizationNetSpec } from '../../shared/models/localization-net/architecture.ts';
import { sampleStateDict } from '../../shared/models/localization-net/sample-weights.ts';

/** A LocalizationNet with a miniature ConvNeXt: same structure as the real variants, kilobytes of weights. */
export const SMALL_SPEC: LocalizationNetSpec = {
  variant: 'custom',
  dims: [8, 16, 24, 32],
  depths: [1, 2, 1, 1],
  positionHidden: [16, 8],
  uncertaintyHidden: [12, 6],
  uncertaintyMin: 0.01,
  uncertaintyMax: 1.0,
};

/** A SMALL_SPEC checkpoint (bare state dict) whose tensor `poisoned` starts with the given values (NaN, Inf). */
export async function writeSmallCheckpoint(path: string, options: { seed?: number; poisoned?: string; values?: number[] } = {}): Promise<void> {
  const entries = sampleStateDict(SMALL_SPEC, options.seed ?? 5).map(({ name, tensor }) => {
    if (name !== options.poisoned) return [name, tensor] as const;
    const data = tensor.data() as Float32Array;
    data.set(options.values ?? [Number.NaN]);
    return [name, { ...tensor, data }] as const;
  });
  await writeTorchCheckpoint(path, pyOrderedDict(entries));
}

/**
 * A SMALL_SPEC checkpoint as a trainer saves it, `beside` the weights at the top level:
 * develop (`model_state_dict`): `{model_state_dict, ...beside}` (put `config`, `epoch`, `val_loss` in `beside`);
 * lightning: `{state_dict: {'model.' + k: ...}, ...beside}` (`epoch`, `global_step`, `callbacks`, `hyper_parameters`).
 */
export async function writeSmallTrainerCheckpoint(path: string, layout: 'model_state_dict' | 'lightning', beside: Readonly<Record<string, PickleValue>>, seed = 5): Promise<void> {
  const prefix = layout === 'lightning' ? 'model.' : '';
  const weights = pyOrderedDict(sampleStateDict(SMALL_SPEC, seed).map(({ name, tensor: t }) => [prefix + name, t] as const));
  await writeTorchCheckpoint(path, pyDict({ [layout === 'lightning' ? 'state_dict' : 'model_state_dict']: weights, ...beside }));
}

/** Lightning's `callbacks` entry of a ModelCheckpoint monitoring `monitor` (its state as `ModelCheckpoint.state_dict()` has it), the scores 0-d tensors. */
export function modelCheckpointCallbacks(monitor: string, bestScore: number, currentScore = bestScore, bestPath = `/checkpoints/epoch=3-${monitor}=${bestScore}.ckpt`): PickleValue {
  const score = (value = bestScore) => tensor('float32', [], new Float32Array([value]));
  return pyDict({
    [`ModelCheckpoint{'monitor': '${monitor}', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, 'train_time_interval': None}`]: pyDict({
      monitor,
      best_model_score: score(),
      best_model_path: bestPath,
      current_score: score(currentScore),
      dirpath: '/checkpoints',
      best_k_models: pyDict([[bestPath, score()]]),
      kth_best_model_path: bestPath,
      kth_value: score(),
      last_model_path: '',
    }),
  });
}

/** A SMALL_SPEC state dict as safetensors (https://github.com/huggingface/safetensors, "Format") with `metadata` as its `__metadata__`. */
export async function writeSmallSafetensors(path: string, metadata: Readonly<Record<string, string>>, seed = 5): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const parts: Buffer[] = [];
  let at = 0;
  for (const { name, tensor: t } of sampleStateDict(SMALL_SPEC, seed)) {
    const data = (typeof t.data === 'function' ? await t.data() : t.data) as Float32Array | BigInt64Array;
    header[name] = { dtype: data instanceof Float32Array ? 'F32' : 'I64', shape: t.shape, data_offsets: [at, at + data.byteLength] };
    parts.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    at += data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.byteLength));
  await writeFile(path, Buffer.concat([length, json, ...parts]));
}
