/**
 * The pickle allowlist held to real PyTorch. torch.save (torch 2.13 with numpy 2, and Debian's
 * torch 1.13 with numpy 1) writes a small LocalizationNet checkpoint three ways
 * (test/fixtures/allowlist_checkpoints.py): with a cProfile.run payload beside the weights, which
 * Heimdall must refuse by name while real torch.load(weights_only=False) runs it; and without it,
 * with the inert trainer types Heimdall accepts (Lightning's AttributeDict under each name Lightning
 * pickles it by, numpy scalar metrics), which must load.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../../shared/checkpoint/index.ts';
import { RandomAccessFile } from '../../shared/checkpoint/random-access-file.ts';
import { readTorchArchive } from '../../shared/checkpoint/torch-zip.ts';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { stateDictEntries } from '../../shared/models/localization-net/architecture.ts';
import { ensureOracle, runPython, type OraclePythons } from '../support/oracle.ts';
import { SMALL_SPEC, writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const SCRIPT = join(import.meta.dirname, '../fixtures/allowlist_checkpoints.py');
const CONFIG = { backbone_size: 'custom', uncertainty_min: 0.05, uncertainty_max: 0.8, learning_rate: 0.001 };

const TORCHES = [
  // Lightning >= 2.2 pickles AttributeDict from lightning_fabric (lightning.fabric in the `lightning` package) ...
  { label: 'torch 2.13, numpy 2', python: (p: OraclePythons) => p.venvPython, modules: ['lightning.fabric.utilities.data', 'lightning_fabric.utilities.data'] },
  // ... older Lightning from pytorch_lightning's parsing module.
  { label: 'torch 1.13, numpy 1', python: (p: OraclePythons) => p.debianPython, modules: ['pytorch_lightning.utilities.parsing', 'lightning.pytorch.utilities.parsing'] },
] as const;

let pythons: OraclePythons;
let work: string;
let source: string;
beforeAll(async () => {
  pythons = await ensureOracle();
  work = await tempDir('heimdall-allowlist-');
  source = join(work, 'small.pth');
  await writeSmallCheckpoint(source);
});

const torchLoad = async (python: string, path: string, mode: 'weights_only' | 'full') =>
  JSON.parse((await runPython(python, SCRIPT, ['load', path, mode])).trim().split('\n').at(-1)!) as { loaded: boolean; error: string | null };

for (const torch of TORCHES) {
  describe(`checkpoints written by ${torch.label}`, () => {
    let dir: string;
    let marker: string;
    beforeAll(async () => {
      dir = join(work, torch.label.replace(/\W+/g, '-'));
      marker = join(dir, 'MARKER');
      await runPython(torch.python(pythons), SCRIPT, ['write', source, dir, marker, ...torch.modules]);
    });

    it('hostile.pt: export refuses cProfile.run by name and runs nothing; real torch refuses it with weights_only and runs it without', async () => {
      const hostile = join(dir, 'hostile.pt');
      const onnx = join(dir, 'hostile.onnx');
      await expect(exportCheckpoint(hostile, onnx)).rejects.toMatchObject({ code: 'UNSAFE_PICKLE', message: expect.stringMatching(/^refused global cProfile\.run:/) });
      expect(existsSync(onnx)).toBe(false);
      expect(existsSync(marker)).toBe(false);

      const safe = await torchLoad(torch.python(pythons), hostile, 'weights_only');
      expect(safe.loaded).toBe(false);
      expect(safe.error).toMatch(/Unsupported (global: GLOBAL|class) cProfile\.run/);
      expect(existsSync(marker)).toBe(false);

      expect(await torchLoad(torch.python(pythons), hostile, 'full')).toEqual({ loaded: true, error: null });
      expect(existsSync(marker)).toBe(true); // the payload ran: this is what Heimdall refused
    });

    it('full.pth, the same without the payload, exports; its numpy metrics read as numbers', async () => {
      const full = join(dir, 'full.pth');
      const checkpoint = await openCheckpoint(full);
      expect(checkpoint.layout).toBe('model_state_dict');
      expect([...checkpoint.tensors.keys()]).toEqual(stateDictEntries(SMALL_SPEC).map((e) => e.name));
      expect(checkpoint.config).toEqual(CONFIG);
      expect(checkpoint.warnings).toEqual([]);
      await checkpoint.close();

      const file = await RandomAccessFile.open(full);
      try {
        const { root } = await readTorchArchive(file);
        expect((root as Map<string, unknown>).get('metrics')).toEqual(new Map<string, unknown>([['val_loss', 0.125], ['train_loss', 0.25], ['best_epoch', 11], ['improved', true]]));
      } finally {
        await file.close();
      }
      const result = await exportCheckpoint(full, join(dir, 'full.onnx'));
      expect(result.spec.dims).toEqual(SMALL_SPEC.dims);
    });

    it.each(torch.modules)('lightning-%s.ckpt: hyper_parameters from that AttributeDict are the config, reported as a placeholder', async (module) => {
      const checkpoint = await openCheckpoint(join(dir, `lightning-${module}.ckpt`));
      expect(checkpoint.layout).toBe('lightning');
      expect(checkpoint.tensors.size).toBe(stateDictEntries(SMALL_SPEC).length);
      expect(checkpoint.config).toEqual(CONFIG);
      expect(checkpoint.warnings.join('\n')).toContain(`${module}.AttributeDict`);
      await checkpoint.close();
    });
  });
}
