import { toPlain } from './plain-data.ts';
import { TorchTensor } from './torch-zip.ts';
import { OpaqueObject, type PickleValue } from './unpickler.ts';

/** The top-level dicts read beside the scalars: Lightning's callback states, a develop trainer's `metrics`. */
export const TRAINER_DICTS: ReadonlySet<string> = new Set(['callbacks', 'metrics']);
/** One-element tensors read per checkpoint (Lightning's ModelCheckpoint holds four or so); the rest are left out. */
export const MAX_SCALAR_TENSORS = 64;

/**
 * What the trainer saved beside the weights (DESIGN §3 Lineage), as plain data for shared/lineage:
 * the root's scalars (a develop `.pth`'s `epoch`, `val_loss`; Lightning's `epoch`, `global_step`)
 * and the TRAINER_DICTS. A one-element tensor among them becomes its number (`scalarValue`: its
 * storage at most MAX_SMALL_RECORD_BYTES), at most MAX_SCALAR_TENSORS of them; any other tensor is
 * left out unread. Optimizer, scheduler and loop state are not walked: large, and silent about the model.
 */
export async function readTrainerState(root: ReadonlyMap<PickleValue, PickleValue>): Promise<Record<string, unknown>> {
  const selected = new Map<PickleValue, PickleValue>();
  for (const [key, value] of root) {
    if (typeof key !== 'string') continue;
    const dict = value instanceof Map || value instanceof OpaqueObject;
    if (dict ? TRAINER_DICTS.has(key) : isScalar(value)) selected.set(key, value);
  }
  if (selected.size === 0) return {};
  // Two walks: the first finds the tensors to read (reading is async, the walk is not), the second places their values.
  const tensors = new Set<TorchTensor>();
  toPlain(selected, 'checkpoint', {
    label: 'trainer state',
    tensor: (t) => {
      if (t.numel === 1 && tensors.size < MAX_SCALAR_TENSORS) tensors.add(t);
      return undefined;
    },
  });
  const values = new Map<TorchTensor, number>();
  for (const tensor of tensors) {
    const value = await tensor.scalarValue();
    if (value !== undefined) values.set(tensor, value);
  }
  return toPlain(selected, 'checkpoint', { label: 'trainer state', tensor: (t) => values.get(t) });
}

function isScalar(value: PickleValue): boolean {
  return typeof value === 'number' || typeof value === 'boolean' || typeof value === 'string' || typeof value === 'bigint' || value instanceof TorchTensor;
}
