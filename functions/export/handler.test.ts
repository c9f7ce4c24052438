/**
 * The export stage carries the sha256 ingest computed (the run id's source) and holds the bytes it
 * reads to it: bytes that changed in the store since ingest are refused before anything is
 * uploaded, whether the event carries the full sha256 or only the run id.
 */
import { chmodSync, closeSync, openSync, readSync, writeSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../shared/config/index.ts';
import type { CloudEvent } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { executeStage, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import { ingestLocalFile } from '../../shared/pipeline/local-ingest.ts';
import { sha256File } from '../../shared/runtime/sha256.ts';
import { MODELS_BUCKET, modelKey } from '../../shared/storage/object-store.ts';
import { writeSmallCheckpoint } from '../../test/support/small-model.ts';
import { tempDir } from '../../test/support/temp.ts';
import { stageFunctions } from '../index.ts';

const dir = await tempDir('heimdall-export-');
const exportStage = stageFunctions.find((s) => s.name === 'export')!;
let environment: StageEnvironment;
let created: CloudEvent<'heimdall.checkpoint.created'>;

/** The checkpoint of `created` in the store, replaced by other bytes (as a store-side edit would); the event's etag no longer pins it. */
async function replacedInStore(): Promise<CloudEvent<'heimdall.checkpoint.created'>> {
  const other = join(dir, 'other.pth');
  await writeSmallCheckpoint(other, { seed: 6 });
  const { bucket, key } = created.data;
  await environment.store.putFile(bucket, key, other);
  return { ...created, data: { ...created.data, etag: '' } };
}

beforeAll(async () => {
  const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data') });
  await mkdir(join(dir, 'scratch'), { recursive: true });
  environment = { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
  const checkpoint = join(dir, 'small.pth');
  await writeSmallCheckpoint(checkpoint, { seed: 5 });
  created = await ingestLocalFile(checkpoint, environment.store, () => undefined);
  expect(created.data.sha256).toBe(await sha256File(checkpoint));
});

describe('export', () => {
  it('exports the ingested bytes under their run id, with the sha256 ingest carried', async () => {
    const progress: string[] = [];
    const exported = await executeStage(exportStage, created, environment, { progress: (message) => progress.push(message) });
    expect(exported).toMatchObject({ type: 'heimdall.model.exported', data: { runId: created.data.runId, checkpoint: { sha256: created.data.sha256 } } });
    expect(await environment.store.stat(MODELS_BUCKET, modelKey(created.data.runId))).toMatchObject({ metadata: { 'source-checkpoint-sha256': created.data.sha256 } });
    // The store hashed the checkpoint as ingest stored it, and vouches for it: only the weight records are read again.
    expect(progress.some((m) => m.startsWith('checking weight records'))).toBe(true);
    expect(progress.some((m) => m.startsWith('hashing checkpoint'))).toBe(false);
  });

  it('refuses bytes whose digest, as the store vouches for it, is not the run’s, before reading them', async () => {
    const other = join(dir, 'vouched.pth');
    await writeSmallCheckpoint(other, { seed: 7 });
    const { bucket, key } = created.data;
    await environment.store.putFileByDigest!(bucket, other, () => key);
    const progress: string[] = [];
    const failed = await executeStage(exportStage, { ...created, data: { ...created.data, etag: '' } }, environment, { progress: (message) => progress.push(message) });
    expect(failed).toMatchObject({ data: { error: { code: 'CHECKPOINT_CORRUPT', message: expect.stringContaining(`not ${created.data.sha256} that run`) } } });
    expect(progress).toEqual([]);
  });

  // The store's own file changed while the export read it: what was read may be two versions of it.
  // Nothing is uploaded, and the failure is retriable: tried again, the file is held anew to the
  // version the event names (a write made it another: OBJECT_NOT_FOUND, for good) and to the run's
  // digest (a chmod changed no byte: exported).
  const replaced = { type: 'heimdall.pipeline.failed', data: { retriable: false, error: { code: 'OBJECT_NOT_FOUND', message: expect.stringContaining('it was replaced') } } };
  const exported = { type: 'heimdall.model.exported' };
  const changes = {
    'written to in place, while the store vouched for its digest': { vouched: true, during: 'checking weight records', change: writeByteOverItself, retried: replaced },
    'written to in place, once the store no longer vouched for it (the exporter hashes it)': { vouched: false, during: 'hashing checkpoint', change: writeByteOverItself, retried: replaced },
    'chmod-ed (its attributes alone)': { vouched: true, during: 'checking weight records', change: (path: string) => chmodSync(path, 0o640), retried: exported },
  };
  for (const [index, [name, { vouched, during, change, retried }]] of Object.entries(changes).entries()) {
    it(`refuses what it read when the store’s file was ${name} during the export, uploads nothing, and fails retriably`, async () => {
      const checkpoint = join(dir, `changed-${index}.pth`);
      await writeSmallCheckpoint(checkpoint, { seed: 8 + index });
      const run = await ingestLocalFile(checkpoint, environment.store, () => undefined);
      const { path } = await environment.store.fetchFile(run.data.bucket, run.data.key);
      // A change of its attributes moves the ctime: the store no longer vouches for the digest.
      if (!vouched) chmodSync(path, 0o600);
      expect((await environment.store.fetchFile(run.data.bucket, run.data.key)).sha256 !== undefined).toBe(vouched);
      let changed = false;
      const failed = await executeStage(exportStage, run, environment, {
        progress: (message) => {
          if (changed || !message.startsWith(during)) return;
          changed = true;
          change(path);
        },
      });
      expect(changed).toBe(true);
      expect(failed).toMatchObject({ data: { retriable: true, error: { code: 'IO_ERROR', message: expect.stringContaining('changed in the store while it was exported') } } });
      expect(await environment.store.stat(MODELS_BUCKET, modelKey(run.data.runId))).toBeUndefined();
      expect(await executeStage(exportStage, run, environment)).toMatchObject(retried);
    });
  }

  it('refuses bytes that are not those the run was started from, and uploads nothing', async () => {
    const event = await replacedInStore();
    // Under a run id of its own, whose model key holds nothing yet.
    const fresh = { ...event, data: { ...event.data, runId: '0123456789abcdef', sha256: `0123456789abcdef${created.data.sha256!.slice(16)}` } };
    const failed = await executeStage(exportStage, fresh, environment);
    expect(failed).toMatchObject({
      type: 'heimdall.pipeline.failed',
      data: { stage: 'export', retriable: false, error: { code: 'CHECKPOINT_CORRUPT', message: expect.stringContaining(`not ${fresh.data.sha256} that run 0123456789abcdef was started from`) } },
    });
    expect(await environment.store.stat(MODELS_BUCKET, modelKey('0123456789abcdef'))).toBeUndefined();
    // The run's own event, now that its bytes are gone from the store: refused too.
    expect(await executeStage(exportStage, event, environment)).toMatchObject({ data: { error: { code: 'CHECKPOINT_CORRUPT' } } });
  });

  it('holds the bytes to the run id when the event carries no sha256', async () => {
    const { sha256: _, ...withoutSha256 } = (await replacedInStore()).data;
    const failed = await executeStage(exportStage, { ...created, data: withoutSha256 }, environment);
    expect(failed).toMatchObject({ data: { error: { code: 'CHECKPOINT_CORRUPT', message: expect.stringContaining(`not ${created.data.runId}… that run`) } } });
  });

  it('with HEIMDALL_VARIANTS=int8, stores the variant beside the model with its metadata, and leaves no scratch file behind', async () => {
    const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data'), HEIMDALL_VARIANTS: 'int8' });
    const scratchDir = join(dir, 'scratch-variants');
    await mkdir(scratchDir, { recursive: true });
    // The checkpoint again: the tests above replaced it in the store.
    const ingested = await ingestLocalFile(join(dir, 'small.pth'), environment.store, () => undefined);
    const exported = await executeStage(exportStage, ingested, { ...environment, config, scratchDir });
    if (exported.type !== 'heimdall.model.exported') throw new Error(JSON.stringify(exported.data));
    const { runId } = ingested.data;
    const [variant, ...others] = exported.data.variants!;
    expect(others).toEqual([]);
    expect(variant).toMatchObject({ name: 'int8', onnx: { uri: environment.store.uri(MODELS_BUCKET, modelKey(runId, 'int8')), opset: exported.data.onnx.opset, irVersion: exported.data.onnx.irVersion } });
    expect(variant!.onnx.sha256).not.toBe(exported.data.onnx.sha256);
    const info = await environment.store.stat(MODELS_BUCKET, modelKey(runId, 'int8'));
    expect(info).toMatchObject({ size: variant!.onnx.bytes, metadata: { sha256: variant!.onnx.sha256, variant: 'int8', 'run-id': runId, 'source-checkpoint-sha256': ingested.data.sha256 } });
    expect(await readdir(scratchDir)).toEqual([]);
    // Unconfigured: no variant in the event.
    const plain = await executeStage(exportStage, ingested, environment);
    expect(plain.data).not.toHaveProperty('variants');
  });
});

/** The file's first byte written over with itself, in place: the same content, but no store can tell. */
function writeByteOverItself(path: string): void {
  const fd = openSync(path, 'r+');
  const byte = Buffer.alloc(1);
  readSync(fd, byte, 0, 1, 0);
  writeSync(fd, byte, 0, 1, 0);
  closeSync(fd);
}
