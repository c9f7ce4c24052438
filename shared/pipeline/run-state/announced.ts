import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { KV } from '@nats-io/kv';
import { uploadId, type ObjectRecord } from '../../events/minio.ts';
import { writeAtomically } from '../../storage/fs.ts';

/** What names one upload: bucket, key, etag and, in a versioned bucket, the version (`uploadId`). */
export type Upload = Pick<ObjectRecord, 'bucket' | 'key' | 'etag' | 'versionId'>;

/** Until its content is hashed an upload has no run id: an ingest failure is filed under this one (the upload's id, shortened). */
export const uploadRunId = (upload: Upload) => uploadId(upload).slice(0, 16);

/**
 * Ingest's dedupe: the uploads that have started their run, each with its run id. An upload is
 * marked once its run's first event is published, never on a failure, so the same object announced
 * again after one (fixed permissions, a late upload) is tried again. Reconciliation reads the same
 * marks to tell the uploads never announced from the rest.
 */
export interface AnnouncedUploads {
  /** The run the upload started, if it started one. */
  runOf(upload: Upload): Promise<string | undefined>;
  mark(upload: Upload, runId: string): Promise<void>;
  /** How long a mark is kept; undefined: for good. An upload older than this may be forgotten rather than never announced. */
  readonly retentionMs?: number;
}

/**
 * The marks in the KV bucket `heimdall_ingest` (key `uploadId`, value the run id), which the NATS
 * ingest worker writes and reads (nats/processors.ts); the bucket's TTL is their retention.
 */
export class KvAnnouncedUploads implements AnnouncedUploads {
  constructor(
    private readonly kv: KV,
    readonly retentionMs?: number,
  ) {}

  async runOf(upload: Upload): Promise<string | undefined> {
    const entry = await this.kv.get(uploadId(upload));
    return entry && entry.operation === 'PUT' ? entry.string() : undefined;
  }

  async mark(upload: Upload, runId: string): Promise<void> {
    await this.kv.put(uploadId(upload), runId);
  }
}

/** The embedded default's marks: `<dataDir>/ingest/<uploadId>`, holding the run id; kept for good. */
export class FsAnnouncedUploads implements AnnouncedUploads {
  private readonly dir: string;

  constructor(dataDir: string) {
    this.dir = resolve(dataDir, 'ingest');
  }

  async runOf(upload: Upload): Promise<string | undefined> {
    return readFile(this.path(upload), 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
  }

  async mark(upload: Upload, runId: string): Promise<void> {
    await writeAtomically(this.path(upload), runId);
  }

  private path(upload: Upload): string {
    return join(this.dir, uploadId(upload));
  }
}
