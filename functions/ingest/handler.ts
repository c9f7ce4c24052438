import { runIdOf, type CloudEvent } from '../../shared/events/index.ts';
import { formatBytes } from '../../shared/cli/format.ts';
import { readModelSummary } from '../../shared/onnx/reader.ts';
import { runStartEvent, type StageContext } from '../../shared/pipeline/stage.ts';
import { sha256File } from '../../shared/runtime/sha256.ts';
import { MODELS_BUCKET, modelKey, type ObjectVersion } from '../../shared/storage/object-store.ts';
import { kindOf, type ObjectRecord } from '../../shared/events/minio.ts';

export type IngestResult = CloudEvent<'heimdall.checkpoint.created'> | CloudEvent<'heimdall.model.exported'>;

/**
 * A created object -> the event that starts its run. The run id is the content's sha256, so the
 * same bytes uploaded under two names are one run. A checkpoint is announced as
 * `checkpoint.created`; an `.onnx` file is already exported: it is placed at the run's model key
 * and announced as `model.exported`, so the run goes straight to validate. Callers filter with
 * `kindOf` first. The bytes hashed are those of the version the notification names (its version id
 * and etag); when that upload is no longer there, OBJECT_NOT_FOUND. Either event starts the run's
 * trace (runStartEvent).
 */
export async function ingestHandler(object: ObjectRecord, ctx: StageContext): Promise<IngestResult> {
  // The version the notification names, not whatever the key holds now: MinIO replays queued
  // notifications after an outage, when newer uploads may have replaced the object.
  const file = await ctx.store.fetchFile(object.bucket, object.key, versionOf(object));
  try {
    // A download is hashed on the way: the file need not be read again.
    if (!file.sha256) ctx.progress(`hashing ${object.key} (${formatBytes(object.size)})`);
    const sha256 = file.sha256 ?? (await sha256File(file.path));
    const runId = runIdOf(sha256);
    if (kindOf(object.key) === 'model') return await announceModel(object, file.path, sha256, ctx);
    return runStartEvent('heimdall.checkpoint.created', {
      stage: 'ingest',
      key: object.key,
      data: { bucket: object.bucket, key: object.key, size: object.size, etag: object.etag, ...(object.versionId ? { versionId: object.versionId } : {}), runId, sha256 },
    });
  } finally {
    await file.release();
  }
}

async function announceModel(object: ObjectRecord, path: string, sha256: string, ctx: StageContext): Promise<CloudEvent<'heimdall.model.exported'>> {
  const runId = runIdOf(sha256);
  const summary = await readModelSummary(path);
  const opset = summary.opsets.get('') ?? summary.opsets.get('ai.onnx') ?? 0;
  const uploadedUri = ctx.store.uri(object.bucket, object.key);
  ctx.progress(`placing ${object.key} at ${modelKey(runId)}`);
  const stored = await ctx.store.putFile(MODELS_BUCKET, modelKey(runId), path, {
    sha256,
    'source-checkpoint': uploadedUri,
    'run-id': runId,
    opset: String(opset),
    'export-date': new Date().toISOString(),
    'model-type': 'LocalizationNet',
  });
  // The upload's own claim when it is a count, else the initializers' element count.
  const claimed = Number(summary.metadata.parameters);
  const counted = summary.graph.initializers.reduce((sum, i) => sum + i.dims.reduce((a, b) => a * Math.max(0, b), 1), 0);
  const params = Number.isSafeInteger(claimed) && claimed > 0 ? claimed : Number.isSafeInteger(counted) ? counted : 0;
  return runStartEvent('heimdall.model.exported', {
    stage: 'export',
    key: object.key,
    data: {
      runId,
      checkpoint: { uri: uploadedUri, sha256, format: 'onnx', ...(object.versionId ? { versionId: object.versionId } : {}) },
      onnx: { uri: ctx.store.uri(MODELS_BUCKET, modelKey(runId)), sha256, bytes: stored.size, opset, irVersion: summary.irVersion },
      architecture: { name: 'LocalizationNet', variant: summary.metadata.variant ?? 'unknown', params },
      warnings: [],
      durationMs: 0,
    },
  });
}

/** What pins the upload a notification names: its version id and etag, where it gives them. */
function versionOf(object: ObjectRecord): ObjectVersion {
  return { ...(object.versionId ? { versionId: object.versionId } : {}), ...(object.etag ? { etag: object.etag } : {}) };
}
