/**
 * Ingest reads the exact object version a notification names (DESIGN §6), on a real S3-protocol
 * server (moto) with versioning on: MinIO replays queued notifications after an outage, when the
 * key may already hold newer uploads. Each version's notification hashes and runs that version's
 * bytes; export and parity read the same version again, whatever the key holds by then.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Client } from 'minio';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stageFunctions } from '../../functions/index.ts';
import { ingestHandler } from '../../functions/ingest/handler.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { runIdOf, type AnyCloudEvent, type CloudEvent } from '../../shared/events/index.ts';
import { parseNotification } from '../../shared/events/minio.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { executeStage, withStageContext, type StageEnvironment } from '../../shared/pipeline/execute.ts';
import type { StageName } from '../../shared/pipeline/stage.ts';
import { MODELS_BUCKET, modelKey } from '../../shared/storage/object-store.ts';
import { startS3Server, type S3Server } from '../support/services/s3-server.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const BUCKET = 'versioned-training';
const KEY = 'runs/localization epoch 3.pth';

const dir = await tempDir('heimdall-versioned-');
let s3: S3Server;
let client: Client;
let environment: StageEnvironment;

interface Upload {
  readonly versionId: string;
  readonly etag: string;
  readonly sha256: string;
}
let v1: Upload;
let v2: Upload;

/** A trainer's upload: a small checkpoint (its seed decides the weights) put at KEY by the minio client. */
async function upload(seed: number): Promise<Upload> {
  const path = join(dir, `seed-${seed}.pth`);
  await writeSmallCheckpoint(path, { seed });
  const { etag, versionId } = await client.fPutObject(BUCKET, KEY, path);
  return { versionId: versionId!, etag, sha256: createHash('sha256').update(await readFile(path)).digest('hex') };
}

/** What MinIO publishes for an upload: the key query-escaped, the etag quoted, the version id beside it. */
function notification(object: { versionId?: string; etag: string }): string {
  const key = encodeURIComponent(KEY).replace(/%20/g, '+');
  return JSON.stringify({
    EventName: 's3:ObjectCreated:Put',
    Key: `${BUCKET}/${key}`,
    Records: [{ eventVersion: '2.0', eventSource: 'minio:s3', eventName: 's3:ObjectCreated:Put', s3: { bucket: { name: BUCKET }, object: { key, size: 1, eTag: `"${object.etag}"`, ...(object.versionId ? { versionId: object.versionId } : {}) } } }],
  });
}

/** Ingest on the notification's one record, as the NATS ingest worker runs it. */
async function ingest(body: string) {
  const [record] = parseNotification(body);
  return withStageContext('ingest', 'versioned', environment, {}, (ctx) => ingestHandler(record!, ctx));
}

const stage = (name: StageName) => stageFunctions.find((s) => s.name === name)!;
const run = (name: StageName, event: AnyCloudEvent) => executeStage(stage(name), event, environment);

beforeAll(async () => {
  s3 = await startS3Server();
  const url = new URL(s3.endpoint);
  client = new Client({ endPoint: url.hostname, port: Number(url.port), useSSL: false, accessKey: s3.accessKey, secretKey: s3.secretKey, region: s3.region, pathStyle: true });
  await client.makeBucket(BUCKET, s3.region);
  await client.setBucketVersioning(BUCKET, { Status: 'Enabled' });
  const config = loadConfig({ HEIMDALL_DATA_DIR: join(dir, 'data'), ...s3.env });
  await mkdir(join(dir, 'scratch'), { recursive: true });
  environment = { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: join(dir, 'scratch') };
  // Both uploads land before any notification is handled: the replay after an outage.
  v1 = await upload(1);
  v2 = await upload(2);
});
afterAll(() => s3?.stop());

describe('a versioned bucket, notifications replayed after a newer upload', () => {
  let created1: CloudEvent<'heimdall.checkpoint.created'>;
  let exported1: AnyCloudEvent;

  it("hashes the older version's bytes for its notification: the run is v1's", async () => {
    expect(v1.sha256).not.toBe(v2.sha256);
    const event = await ingest(notification(v1));
    expect(event).toMatchObject({ type: 'heimdall.checkpoint.created', data: { bucket: BUCKET, key: KEY, etag: v1.etag, versionId: v1.versionId, runId: runIdOf(v1.sha256), sha256: v1.sha256 } });
    created1 = event as CloudEvent<'heimdall.checkpoint.created'>;
  });

  it("exports v1's weights, and the exported event and the model's metadata name v1", async () => {
    exported1 = await run('export', created1);
    expect(exported1).toMatchObject({
      type: 'heimdall.model.exported',
      data: { runId: runIdOf(v1.sha256), checkpoint: { uri: `s3://${BUCKET}/${KEY}`, sha256: v1.sha256, versionId: v1.versionId } },
    });
    expect((await environment.store.stat(MODELS_BUCKET, modelKey(runIdOf(v1.sha256))))?.metadata).toMatchObject({ 'source-checkpoint-sha256': v1.sha256, 'source-checkpoint-version': v1.versionId });
  });

  it("checks parity against v1's weights, which v2's would fail", async () => {
    const validated = await run('validate', exported1);
    expect(validated.type).toBe('heimdall.model.validated');
    const parity = await run('parity', validated);
    expect(parity).toMatchObject({ type: 'heimdall.model.parity-checked', data: { reference: 'reference-impl', passed: true } });

    // The same event without the version reads what the key holds now (v2): another model's weights.
    const unpinned = { ...validated, data: { ...validated.data, checkpoint: { ...(validated.data as { checkpoint: object }).checkpoint, versionId: undefined } } } as AnyCloudEvent;
    expect(await run('parity', unpinned)).toMatchObject({ type: 'heimdall.pipeline.failed', data: { stage: 'parity', error: { code: 'PARITY_EXCEEDED' } } });
  });

  it("runs v2 for v2's notification: another run, v2's bytes", async () => {
    const created2 = await ingest(notification(v2));
    expect(created2.data).toMatchObject({ versionId: v2.versionId, runId: runIdOf(v2.sha256) });
    expect(created2.data.runId).not.toBe(created1.data.runId);
    const exported2 = await run('export', created2);
    expect(exported2).toMatchObject({ type: 'heimdall.model.exported', data: { runId: runIdOf(v2.sha256), checkpoint: { sha256: v2.sha256, versionId: v2.versionId } } });
  });

  it('refuses an unversioned notification whose etag the key no longer has: OBJECT_NOT_FOUND, not retried', async () => {
    const error = await ingest(notification({ etag: v1.etag })).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'OBJECT_NOT_FOUND', message: expect.stringContaining(`has etag ${v2.etag}, not ${v1.etag}`) });
  });
});

describe('listing a versioned bucket (what reconciliation reads)', () => {
  it("names each key's current version, as its notification did; a deleted key is not listed", async () => {
    const gone = join(dir, 'gone.pth');
    await writeSmallCheckpoint(gone, { seed: 3 });
    await client.fPutObject(BUCKET, 'runs/deleted.pth', gone);
    await client.removeObject(BUCKET, 'runs/deleted.pth');
    const listed = [];
    for await (const object of environment.store.list(BUCKET)) listed.push(object);
    expect(listed).toEqual([{ key: KEY, size: expect.any(Number), etag: v2.etag, versionId: v2.versionId, lastModified: expect.any(Date) }]);
  });
});
