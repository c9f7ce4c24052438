import { mkdir, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { ErrorCodes, HeimdallError } from '../../shared/errors/index.ts';
import { createEvent, runIdOf } from '../../shared/events/index.ts';
import { formatBytes } from '../../shared/cli/format.ts';
import { exportCheckpoint } from '../../shared/models/localization-net/export.ts';
import { externalDataName } from '../../shared/onnx/model.ts';
import type { WrittenModel } from '../../shared/onnx/writer.ts';
import { source, type StageContext, type StageHandler } from '../../shared/pipeline/stage.ts';
import { MODELS_BUCKET, modelKey } from '../../shared/storage/object-store.ts';

/**
 * checkpoint.created -> model.exported: reads the checkpoint from the object store (the version and
 * etag the event names: OBJECT_NOT_FOUND when that upload was replaced), writes the ONNX
 * model to `models/localization/<runId>/model.onnx`, its weights beside it in `model.onnx.data`, both
 * with its metadata. Idempotent: the export is
 * deterministic and the key content-addressed, so a redelivery rewrites the same bytes. The run's
 * sha256 (ingest's hash, the run id's source) is carried, not recomputed as a new truth, and bytes
 * that are not the run's are never exported under its id: their digest is the one the store vouches
 * for (computed as it downloaded them, or as the embedded store stored them), held to the run's
 * before the export starts, and the embedded store's own file, once read, held to be unchanged
 * since it was fetched; where the store knows none, the exporter's read of the whole file (for the
 * zip's CRC checks, beside the writer) hashes it on the way. The configured variants
 * (DESIGN §3 Variants) are written by the same export and stored beside the model
 * (`model.<variant>.onnx` and its `.data`, the same metadata plus `variant`).
 */
export const exportHandler: StageHandler<'heimdall.checkpoint.created', 'heimdall.model.exported'> = async (event, ctx) => {
  const { bucket, key, runId, versionId, etag } = event.data;
  // The version ingest hashed (the run id is its sha256), even when newer uploads replaced it since.
  const checkpoint = await ctx.store.fetchFile(bucket, key, { ...(versionId ? { versionId } : {}), ...(etag ? { etag } : {}) });
  // The file names are those stored (model.onnx, model.int8.onnx): each model names its external data file by its own name.
  const folder = join(ctx.scratchDir, runId);
  const out = join(folder, basename(modelKey(runId)));
  const variants = ctx.config.variants;
  try {
    if (checkpoint.sha256) checkSameBytes(event.data, checkpoint.sha256);
    await mkdir(folder, { recursive: true });
    const sourceMetadata = await uploadMetadata(ctx, event.data);
    ctx.progress(`exporting ${key} (${formatBytes(event.data.size)})`);
    const result = await exportCheckpoint(checkpoint.path, out, {
      opset: ctx.config.opset,
      // Weights beside the graph, page-aligned: onnxruntime maps them instead of copying them out of the protobuf (cold start, issue 14).
      externalData: true,
      ...(variants.length > 0 ? { variants } : {}),
      signal: ctx.signal,
      sourceMetadata,
      ...(checkpoint.sha256 ? { sha256: checkpoint.sha256 } : {}),
      onProgress: ({ phase, variant, doneBytes, totalBytes }) => ctx.progress(`${PHASE_LABEL[phase]}${variant ? ` (${variant})` : ''} ${formatBytes(doneBytes)} / ${formatBytes(totalBytes)}`),
    });
    if (!checkpoint.sha256) checkSameBytes(event.data, result.checkpoint.sha256);
    // The store's own file, read more than once (the digest it vouched for, or the exporter's hash,
    // and the weights): unchanged since it was fetched, or what was read may be two versions of it.
    // Retriable: tried again, the file is held anew to the version the event names and to the run's
    // digest (a chmod alone then passes; a write is another version, OBJECT_NOT_FOUND, or, with its
    // mtime set back, other bytes than the run's, CHECKPOINT_CORRUPT).
    if (checkpoint.unchanged && !(await checkpoint.unchanged())) {
      throw new HeimdallError(ErrorCodes.IO_ERROR, `${key} changed in the store while it was exported (written to, or its attributes changed): export it again`);
    }
    for (const warning of result.warnings) ctx.logger.warn({ runId, warning }, 'export warning');
    const checkpointUri = ctx.store.uri(bucket, key);
    const metadata = {
      'source-checkpoint': checkpointUri,
      'source-checkpoint-sha256': result.checkpoint.sha256,
      ...(versionId ? { 'source-checkpoint-version': versionId } : {}),
      'run-id': runId,
      opset: String(result.opset),
      'export-date': new Date().toISOString(),
      'model-type': 'LocalizationNet',
    };
    // The stage's own scratch files: the embedded store moves them in rather than copying hundreds of MB.
    const upload = async (key: string, written: WrittenModel, extra: Record<string, string> = {}) => {
      // The weights first: a stored model never names a data file that is not there yet.
      if (written.externalData) {
        ctx.progress(`uploading ${basename(written.externalData.path)} (${formatBytes(written.externalData.bytes)})`);
        await ctx.store.putFile(MODELS_BUCKET, externalDataName(key), written.externalData.path, { sha256: written.externalData.sha256, ...metadata, ...extra }, { move: true });
      }
      ctx.progress(`uploading ${basename(key)} (${formatBytes(written.bytes)})`);
      await ctx.store.putFile(MODELS_BUCKET, key, written.path, { sha256: written.sha256, ...metadata, ...extra }, { move: true });
    };
    await upload(modelKey(runId), result.onnx);
    for (const variant of result.variants) await upload(modelKey(runId, variant.name), variant.onnx, { variant: variant.name });
    const artifact = (key: string, written: WrittenModel) => ({
      uri: ctx.store.uri(MODELS_BUCKET, key),
      sha256: written.sha256,
      bytes: written.bytes,
      opset: result.opset,
      irVersion: result.irVersion,
      ...(written.externalData ? { externalData: { uri: ctx.store.uri(MODELS_BUCKET, externalDataName(key)), sha256: written.externalData.sha256, bytes: written.externalData.bytes } } : {}),
    });
    return createEvent('heimdall.model.exported', {
      stage: 'export',
      source: source('export'),
      subject: key,
      data: {
        runId,
        checkpoint: { uri: checkpointUri, sha256: result.checkpoint.sha256, format: result.checkpoint.format, ...(versionId ? { versionId } : {}) },
        onnx: artifact(modelKey(runId), result.onnx),
        ...(result.variants.length > 0 ? { variants: result.variants.map((v) => ({ name: v.name, onnx: artifact(modelKey(runId, v.name), v.onnx) })) } : {}),
        architecture: { name: 'LocalizationNet', variant: result.spec.variant, params: result.parameters },
        ...(result.training ? { training: result.training } : {}),
        warnings: [...result.warnings],
        durationMs: Math.round(result.durationMs),
      },
    });
  } finally {
    await checkpoint.release();
    await rm(folder, { recursive: true, force: true });
  }
};

const PHASE_LABEL = { hash: 'hashing checkpoint', check: 'checking weight records', write: 'writing weights' } as const;

/**
 * The bytes exported are those ingest hashed: their sha256 is the one the event carries (or, from a
 * producer that carries none, begins with the run id). Else the object changed in the store since
 * (replaced in place, damaged): CHECKPOINT_CORRUPT, before anything is uploaded.
 */
function checkSameBytes(created: { runId: string; sha256?: string | undefined; key: string }, read: string): void {
  const expected = created.sha256 ?? `${created.runId}…`;
  if (created.sha256 ? read === created.sha256 : runIdOf(read) === created.runId) return;
  throw new HeimdallError(ErrorCodes.CHECKPOINT_CORRUPT, `${created.key} now has sha256 ${read}, not ${expected} that run ${created.runId} was started from: it changed in the store since it was ingested`);
}

/**
 * The checkpoint object's user metadata (a trainer's `mlflow-run-id`), when it is that of the upload
 * the run was started from: `stat` answers for what the key holds now, which on a versioned bucket
 * may be a newer upload with another etag (then none).
 */
async function uploadMetadata(ctx: StageContext, object: { bucket: string; key: string; etag: string }): Promise<Readonly<Record<string, string>>> {
  const info = await ctx.store.stat(object.bucket, object.key);
  // Event etags are bare (the notification's quotes are removed on parsing), as stores report them.
  const same = info !== undefined && (!object.etag || info.etag === object.etag);
  return same ? info.metadata : {};
}
