/**
 * readTraining on real checkpoint files of every layout we accept (written by our torch.save twin
 * and by hand for safetensors), opened by the checkpoint reader as the exporter opens them; and on
 * hostile ones: a huge config, non-finite metrics, metric tensors of many elements (never read:
 * their records are damaged, and reading one would fail the open), an invalid run id.
 */
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { modelCheckpointCallbacks, writeSmallCheckpoint, writeSmallSafetensors, writeSmallTrainerCheckpoint } from '../../test/support/small-model.ts';
import { tempDir } from '../../test/support/temp.ts';
import { openCheckpoint } from '../checkpoint/index.ts';
import { pyDict, pyFloat, tensor, type PickleValue } from '../checkpoint/pickle-writer.ts';
import { RandomAccessFile } from '../checkpoint/random-access-file.ts';
import { MAX_CONFIG_VALUES } from '../checkpoint/plain-data.ts';
import { MAX_SCALAR_TENSORS } from '../checkpoint/trainer-state.ts';
import { ZipReader } from '../checkpoint/zip-reader.ts';
import { ModelExported } from '../events/schemas.ts';
import { MAX_HYPER_PARAMETERS, MAX_VALUE_CHARS, readTraining } from './training.ts';

const RUN = '0123456789abcdef0123456789abcdef';
const OTHER_RUN = 'fedcba9876543210fedcba9876543210';

let dir: string;
beforeAll(async () => {
  dir = await tempDir('heimdall-lineage-');
});

async function trainingOf(path: string, objectMetadata?: Record<string, string>) {
  const checkpoint = await openCheckpoint(path);
  try {
    return readTraining(checkpoint, objectMetadata);
  } finally {
    await checkpoint.close();
  }
}

async function develop(name: string, beside: Record<string, PickleValue>): Promise<string> {
  const path = join(dir, name);
  await writeSmallTrainerCheckpoint(path, 'model_state_dict', beside);
  return path;
}

/** Flips a byte of the storage record `bytes` long, so that any read of it fails its CRC. */
async function damageRecordOfSize(path: string, bytes: number): Promise<void> {
  const file = await RandomAccessFile.open(path);
  const zip = await ZipReader.open(file);
  const records = [...zip.entries.values()].filter((e) => e.size === bytes);
  await file.close();
  expect(records).toHaveLength(1);
  const handle = await open(path, 'r+');
  await handle.write(Buffer.from([0xa5]), 0, 1, records[0]!.dataOffset + 1);
  await handle.close();
}

describe('readTraining, layout by layout', () => {
  it("develop .pth: epoch, top-level metrics (a 0-d float64 tensor at full precision), the `metrics` dict, config flattened, the run id from the config", async () => {
    const path = await develop('develop.pth', {
      config: pyDict({
        learning_rate: pyFloat(0.001),
        batch_size: 32,
        augment: true,
        optimizer: pyDict({ name: 'adamw', betas: [pyFloat(0.9), pyFloat(0.999)] }),
        scheduler: null,
        mlflow_run_id: RUN,
      }),
      epoch: 12,
      val_loss: pyFloat(0.42),
      train_loss: pyFloat(0.5),
      val_rmse: tensor('float64', [], new Float64Array([0.123456789012345])),
      metrics: pyDict({ val_mae: pyFloat(0.2), improved: true, per_receiver: pyDict({ r1: pyFloat(0.1) }) }),
      optimizer_state_dict: pyDict({ state: pyDict({}), param_groups: [pyDict({ lr: pyFloat(0.001), params: [0, 1, 2] })] }),
      note: 'seed sweep 3',
    });
    expect(await trainingOf(path)).toEqual({
      training: {
        epoch: 12,
        metrics: { val_loss: 0.42, train_loss: 0.5, val_rmse: 0.123456789012345, val_mae: 0.2, 'per_receiver.r1': 0.1 },
        hyperParameters: { learning_rate: 0.001, batch_size: 32, augment: true, 'optimizer.name': 'adamw', 'optimizer.betas': '[0.9,0.999]' },
        mlflowRunId: RUN,
      },
      warnings: [],
    });
  });

  it("Lightning .ckpt: epoch, global_step, ModelCheckpoint's best_model_score (a 0-d float32 tensor) under its monitor, hyper_parameters", async () => {
    const path = join(dir, 'lightning.ckpt');
    await writeSmallTrainerCheckpoint(path, 'lightning', {
      epoch: 7,
      global_step: 700,
      'pytorch-lightning_version': '2.4.0',
      loops: pyDict({ fit_loop: pyDict({ 'epoch_loop.state_dict': pyDict({ _batches_that_stepped: 700 }) }) }),
      callbacks: modelCheckpointCallbacks('val_loss', 0.3),
      optimizer_states: [pyDict({ state: pyDict({}), param_groups: [] })],
      hparams_name: 'kwargs',
      hyper_parameters: pyDict({ backbone_size: 'custom', lr: pyFloat(3e-4), mlflow_run_id: RUN }),
    });
    expect(await trainingOf(path)).toEqual({
      training: { epoch: 7, step: 700, metrics: { val_loss: Math.fround(0.3) }, hyperParameters: { backbone_size: 'custom', lr: 3e-4 }, mlflowRunId: RUN },
      warnings: [],
    });
  });

  it("Lightning .ckpt: the saved model's own current_score wins over the run's best_model_score (another model's in a last.ckpt)", async () => {
    const path = join(dir, 'last.ckpt');
    await writeSmallTrainerCheckpoint(path, 'lightning', { epoch: 9, callbacks: modelCheckpointCallbacks('val_loss', 0.3, 0.45) });
    expect((await trainingOf(path)).training?.metrics).toEqual({ val_loss: Math.fround(0.45) });
  });

  it('a bare state dict has no training; the run id in the object metadata (any case, as S3 lower-cases it) still gives one', async () => {
    const path = join(dir, 'bare.pt');
    await writeSmallCheckpoint(path);
    expect(await trainingOf(path)).toEqual({ warnings: [] });
    expect(await trainingOf(path, { sha256: 'x', 'Mlflow-Run-Id': RUN })).toEqual({ training: { metrics: {}, hyperParameters: {}, mlflowRunId: RUN }, warnings: [] });
  });

  it('safetensors __metadata__: epoch and step as integers, decimals under metric names as metrics, the rest as hyper-parameters', async () => {
    const path = join(dir, 'model.safetensors');
    await writeSmallSafetensors(path, {
      format: 'pt',
      epoch: '4',
      global_step: '400',
      val_loss: '0.25',
      train_loss: '3e-1',
      test_rmse: 'n/a',
      learning_rate: '0.001',
      backbone_size: 'custom',
    });
    expect(await trainingOf(path, { 'mlflow-run-id': RUN })).toEqual({
      training: { epoch: 4, step: 400, metrics: { val_loss: 0.25, train_loss: 0.3 }, hyperParameters: { test_rmse: 'n/a', learning_rate: '0.001', backbone_size: 'custom' }, mlflowRunId: RUN },
      warnings: [],
    });
  });

  it("prefers the checkpoint's own run id to the object's, and a metric the trainer saved to ModelCheckpoint's", async () => {
    const path = join(dir, 'both.ckpt');
    await writeSmallTrainerCheckpoint(path, 'lightning', { val_loss: pyFloat(0.2), callbacks: modelCheckpointCallbacks('val_loss', 0.3), mlflow_run_id: RUN });
    expect((await trainingOf(path, { 'mlflow-run-id': OTHER_RUN })).training).toEqual({ metrics: { val_loss: 0.2 }, hyperParameters: {}, mlflowRunId: RUN });
  });
});

describe('readTraining on hostile checkpoints', () => {
  it(`keeps ${MAX_HYPER_PARAMETERS} hyper-parameters of a huge config, each value cut to ${MAX_VALUE_CHARS} characters, and says so`, async () => {
    const long = 'x'.repeat(20_000);
    const path = await develop('huge-config.pth', { config: pyDict(Array.from({ length: 5000 }, (_, i) => [`param_${i}`, long] as const)) });
    const { training, warnings } = await trainingOf(path);
    const values = Object.values(training!.hyperParameters);
    expect(values).toHaveLength(MAX_HYPER_PARAMETERS);
    expect(Object.keys(training!.hyperParameters).at(-1)).toBe(`param_${MAX_HYPER_PARAMETERS - 1}`);
    expect(values.every((v) => v === long.slice(0, MAX_VALUE_CHARS))).toBe(true);
    expect(warnings).toEqual([`${5000 - MAX_HYPER_PARAMETERS} hyper-parameters past the first ${MAX_HYPER_PARAMETERS} (or with keys over 250 characters) left out`]);
  });

  it('leaves the lineage out, with a warning, when the trainer state is too large to read (a per-step loss history), and still opens the model', async () => {
    const history = Array.from({ length: MAX_CONFIG_VALUES + 1 }, (_, i) => pyFloat(1 / (i + 1)));
    const path = await develop('history.pth', { val_loss: pyFloat(0.2), metrics: pyDict({ loss_per_step: history }) });
    const checkpoint = await openCheckpoint(path);
    try {
      expect(checkpoint.tensors.size).toBeGreaterThan(0);
      expect(checkpoint.trainerState).toEqual({});
      expect(checkpoint.warnings).toEqual([expect.stringMatching(/^training metadata left out: .*expands to more than 100000 values/)]);
      expect(readTraining(checkpoint).training).toBeUndefined();
    } finally {
      await checkpoint.close();
    }
  });

  it('leaves out non-finite metrics, saying which', async () => {
    const path = await develop('nan.pth', {
      val_loss: pyFloat(Number.NaN),
      train_loss: pyFloat(Number.POSITIVE_INFINITY),
      val_rmse: tensor('float32', [], new Float32Array([Number.NaN])),
      val_mae: pyFloat(0.1),
    });
    expect(await trainingOf(path)).toEqual({
      training: { metrics: { val_mae: 0.1 }, hyperParameters: {} },
      warnings: ['training metric val_loss is NaN: left out', 'training metric train_loss is Infinity: left out', 'training metric val_rmse is NaN: left out'],
    });
  });

  it('never reads a metric tensor of many elements (its damaged record would fail the read), nor a best_model_score of many', async () => {
    const many = (n: number) => tensor('float32', [n], new Float32Array(n).fill(0.5));
    const path = join(dir, 'many.ckpt');
    await writeSmallTrainerCheckpoint(path, 'lightning', {
      epoch: 1,
      val_loss: many(4099),
      callbacks: pyDict({ "ModelCheckpoint{'monitor': 'val_rmse'}": pyDict({ monitor: 'val_rmse', best_model_score: many(4111) }) }),
    });
    await damageRecordOfSize(path, 4099 * 4);
    await damageRecordOfSize(path, 4111 * 4);
    expect(await trainingOf(path)).toEqual({ training: { epoch: 1, metrics: {}, hyperParameters: {} }, warnings: [] });
  });

  it(`reads at most ${MAX_SCALAR_TENSORS} one-element tensors`, async () => {
    const scalars = Object.fromEntries(Array.from({ length: MAX_SCALAR_TENSORS + 10 }, (_, i) => [`val_m${i}`, tensor('float32', [1], new Float32Array([i]))]));
    const { training } = await trainingOf(await develop('scalars.pth', scalars));
    expect(Object.keys(training!.metrics)).toEqual(Array.from({ length: MAX_SCALAR_TENSORS }, (_, i) => `val_m${i}`));
  });

  it('ignores a run id that is not an MLflow one (falling back to the object metadata), and keeps a "__proto__" key a key', async () => {
    const path = await develop('odd.pth', { config: pyDict([['mlflow_run_id', '../../etc/passwd'], ['__proto__', 'polluted']]) });
    const { training, warnings } = await trainingOf(path, { 'mlflow-run-id': OTHER_RUN });
    expect(training).toEqual({ metrics: {}, hyperParameters: { ['__proto__']: 'polluted' }, mlflowRunId: OTHER_RUN });
    expect(Object.getPrototypeOf(training!.hyperParameters)).toBe(Object.prototype);
    expect(warnings).toEqual(['mlflow_run_id in the checkpoint (../../etc/passwd) is not an MLflow run id (32 lowercase hex digits): ignored']);
    // The exported event's schema (zod) drops such a key, and sets no prototype either.
    const parsed = ModelExported.shape.training.parse(training)!;
    expect(parsed.hyperParameters).toEqual({});
    expect(Object.getPrototypeOf(parsed.hyperParameters)).toBe(Object.prototype);
  });
});
