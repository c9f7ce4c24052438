import { access, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureOracle, runPython, type OraclePythons } from '../../test/support/oracle.ts';
import { tempDir } from '../../test/support/temp.ts';
import { pyDict, pyOrderedDict, pyTuple, tensor, type PickleValue } from './pickle-writer.ts';
import { describeValue, expectSameProbe, probeCheckpoint } from './torch-probe.test-helper.ts';
import { defaultArchiveName, writeTorchCheckpoint } from './torch-writer.ts';

const dir = await tempDir('torch-writer-');
let pythons: OraclePythons;
beforeAll(async () => {
  pythons = await ensureOracle();
});

/** Both real torches: Debian's 1.13 and the venv's 2.x. */
const interpreters = [
  ['torch 1.13 (Debian)', () => pythons.debianPython],
  ['torch 2.x (venv)', () => pythons.venvPython],
] as const;

/** Every record of a zip, as Python's zipfile reads it (CRC-checked), plus data alignment. */
const LIST_RECORDS = String.raw`
import json, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    assert z.testzip() is None
    out = {"names": z.namelist(), "records": {}, "misaligned": []}
    for info in z.infolist():
        out["records"][info.filename] = z.read(info).hex()
        with open(sys.argv[1], "rb") as f:
            f.seek(info.header_offset + 26)
            n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        if (info.header_offset + 30 + n + m) % 64:
            out["misaligned"].append(info.filename)
print(json.dumps(out))
`;

interface Records {
  names: string[];
  records: Record<string, string>;
  misaligned: string[];
}

async function listRecords(path: string): Promise<Records> {
  const script = join(dir, 'list_records.py');
  await writeFile(script, LIST_RECORDS);
  return JSON.parse(await runPython(pythons.debianPython, script, [path])) as Records;
}

const f16 = (...bits: number[]) => Uint16Array.from(bits);

/** Every dtype, a scalar, an empty tensor, a shared tensor, tensors inside a list and a tuple. */
function mixedObject(): PickleValue {
  const shared = tensor('float32', [2, 3], Float32Array.from([1, -2, 3.25, 4e-8, -5e7, 6]));
  return pyDict({
    state: pyOrderedDict({
      f32: shared,
      f64: tensor('float64', [3], Float64Array.from([Math.PI, -1e300, 5e-324])),
      f16: tensor('float16', [3], f16(0x3c00, 0xc000, 0x3555)), // 1, -2, 0.333
      bf16: tensor('bfloat16', [2], f16(0x3f80, 0xc049)), // 1, -3.140625
      i64: tensor('int64', [3], BigInt64Array.from([2n ** 40n, -1n, 0n])),
      i32: tensor('int32', [2, 1], Int32Array.from([-(2 ** 31), 2 ** 31 - 1])),
      i16: tensor('int16', [2], Int16Array.from([-32768, 1234])),
      i8: tensor('int8', [2], Int8Array.from([-128, 127])),
      u8: tensor('uint8', [3], Uint8Array.from([0, 128, 255])),
      bool: tensor('bool', [4], Uint8Array.from([1, 0, 0, 1])),
      scalar: tensor('float32', [], Float32Array.of(3.5)),
      empty: tensor('float32', [0, 4], new Float32Array(0)),
      lazy: tensor('float32', [2, 2], () => Float32Array.from([9, 8, 7, 6])),
      again: shared,
    }),
    // No Python floats outside tensors: torch 1.13's weights_only unpickler has no BINFLOAT.
    list: [1, 'two', pyTuple(3, tensor('int64', [1], BigInt64Array.of(42n))), [true, false, null]],
    big: 2n ** 40n,
    negative: -70000,
    text: 'héllo',
  });
}

describe('writeTorchCheckpoint', () => {
  for (const [label, python] of interpreters) {
    it(`writes a checkpoint that ${label} loads with weights_only=True, every value and tensor byte exact`, async () => {
      const root = mixedObject();
      const path = join(dir, 'mixed.pt');
      const bytes = await writeTorchCheckpoint(path, root);
      expect(bytes).toBeGreaterThan(0);
      const probe = await probeCheckpoint(python(), path, true);
      expectSameProbe(probe.value, await describeValue(root));
      // `f32` and `again` are one tensor: torch loads one storage for both.
      expect(probe.pointers[0]).toBe(probe.pointers[13]);
      expect(new Set(probe.pointers).size).toBeGreaterThanOrEqual(13);
    });

    it(`writes ZIP64 records (thresholds lowered) that ${label} reads`, async () => {
      const root = mixedObject();
      const path = join(dir, 'zip64.pt');
      // torch 1.13's miniz bounds-checks a saturated local-header offset as if it were the real
      // one (0xFFFFFFFF + size must fit in the file), so a small archive cannot have ZIP64 offsets
      // there; real > 4 GiB offsets pass.
      const offsets = label.includes('1.13') ? {} : { zip64OffsetThreshold: 64 };
      await writeTorchCheckpoint(path, root, { zip: { zip64SizeThreshold: 64, zip64CountThreshold: 2, ...offsets } });
      const probe = await probeCheckpoint(python(), path, true);
      expectSameProbe(probe.value, await describeValue(root));
    });
  }

  it('lays out the archive as torch.save does: same records, same data.pkl bytes, 64-byte alignment', async () => {
    // The same state dict, saved by real torch (both versions) and by us, under the same file name.
    const reference = String.raw`
import collections, sys, torch
sd = collections.OrderedDict()
sd["w"] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
sd["b"] = torch.tensor([1.5, -2.0], dtype=torch.float64)
sd["n"] = torch.tensor(7)
sd["h"] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float16)
sd["m"] = torch.tensor([True, False])
sd["w2"] = sd["w"]
torch.save(sd, sys.argv[1])
`;
    const script = join(dir, 'reference.py');
    await writeFile(script, reference);
    const w = tensor('float32', [2, 3], Float32Array.from([0, 1, 2, 3, 4, 5]));
    const ours = pyOrderedDict({
      w,
      b: tensor('float64', [2], Float64Array.from([1.5, -2])),
      n: tensor('int64', [], BigInt64Array.of(7n)),
      h: tensor('float16', [3], f16(0x3c00, 0xc000, 0x3800)),
      m: tensor('bool', [2], Uint8Array.from([1, 0])),
      w2: w,
    });
    await mkdir(join(dir, 'ours'), { recursive: true });
    const oursPath = join(dir, 'ours', 'ref.pt');
    await writeTorchCheckpoint(oursPath, ours);
    const mine = await listRecords(oursPath);
    expect(mine.misaligned).toEqual([]);
    expect(mine.names).toEqual([
      'ref/data.pkl',
      'ref/.format_version',
      'ref/.storage_alignment',
      'ref/byteorder',
      'ref/data/0',
      'ref/data/1',
      'ref/data/2',
      'ref/data/3',
      'ref/data/4',
      'ref/version',
      'ref/.data/serialization_id',
    ]);
    expect(Buffer.from(mine.records['ref/.data/serialization_id']!, 'hex').toString()).toMatch(/^\d{40}$/);

    for (const [label, python] of interpreters) {
      const theirsDir = join(dir, label.replace(/\W+/g, '-'));
      await mkdir(theirsDir, { recursive: true });
      const theirsPath = join(theirsDir, 'ref.pt');
      await runPython(python(), script, [theirsPath]);
      const theirs = await listRecords(theirsPath);
      // Every record torch wrote, we wrote with the same bytes (the serialization id aside:
      // torch derives it from std::hash of the names).
      for (const name of theirs.names) {
        if (name.endsWith('/.data/serialization_id')) continue;
        expect(mine.records[name], `${label}: ${name}`).toBe(theirs.records[name]);
      }
      expect(theirs.misaligned, label).toEqual([]);
      if (label.includes('2.x')) expect(mine.names, label).toEqual(theirs.names);
    }
  });

  it('names the archive folder after the file, like torch, and takes an explicit name', async () => {
    expect(defaultArchiveName('/a/b/model.ckpt')).toBe('model');
    expect(defaultArchiveName('/a/b/my.model.pt')).toBe('my.model');
    expect(defaultArchiveName('/a/b/weights')).toBe('weights');
    expect(defaultArchiveName('/a/b/.pt')).toBe('archive');
    expect(defaultArchiveName('/a/b/modèle.pt')).toBe('archive');
    const path = join(dir, 'named.pt');
    await writeTorchCheckpoint(path, pyOrderedDict({ x: tensor('int64', [1], BigInt64Array.of(1n)) }), { archiveName: 'archive' });
    expect((await listRecords(path)).names[0]).toBe('archive/data.pkl');
  });

  it('removes the partial file when a tensor cannot be written', async () => {
    const path = join(dir, 'broken.pt');
    const root = pyOrderedDict({
      ok: tensor('float32', [2], Float32Array.of(1, 2)),
      bad: tensor('float32', [3], () => Float32Array.of(1, 2)),
    });
    await expect(writeTorchCheckpoint(path, root)).rejects.toThrow(/needs 3 values/);
    await expect(access(path)).rejects.toThrow();
  });
});
