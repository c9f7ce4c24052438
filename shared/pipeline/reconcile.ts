import { join } from 'node:path';
import { jetstream, type JetStreamClient } from '@nats-io/jetstream';
import { openKv, provisionStreams } from '../bus/nats/provision.ts';
import { MINIO_SUBJECT } from '../bus/nats/subjects.ts';
import { kindOf, uploadId, type ObjectRecord } from '../events/minio.ts';
import type { Logger } from '../logging/index.ts';
import type { ListedObject, ObjectStore } from '../storage/object-store.ts';
import { runInProcess, type InProcessOptions } from './in-process.ts';
import type { NatsRuntime } from './nats/runtime.ts';
import { FsAnnouncedUploads, KvAnnouncedUploads, uploadRunId, type AnnouncedUploads } from './run-state/announced.ts';
import { FsRunStateStore } from './run-state/fs.ts';
import type { RunStateStore } from './run-state/run-state.ts';
import type { IngestFunction } from './stage.ts';
import { FileSweepLock, KvSweepLock, lockOwner, type SweepLock } from './sweep-lock.ts';

/**
 * Reconciliation (DESIGN §3): notifications get lost (MinIO drops queued events across restarts,
 * and stops sending after long outages), so a sweep lists the checkpoint bucket and starts a run
 * for each upload ingest never announced. "Never announced" is ingest's own dedupe: no mark for the
 * upload (bucket, key, etag, version; announced.ts), and no failed ingest on record under the
 * upload's id. A started run is marked by ingest itself, so a second sweep, or one while the run is
 * in flight, starts nothing for it; a finished run (registered or failed) is never started again.
 */
export interface SweepPorts {
  readonly store: ObjectStore;
  readonly announced: AnnouncedUploads;
  /** Run records: an ingest that failed is filed under the upload's id (uploadRunId). */
  readonly runState: RunStateStore;
  /** Starts the run of an upload the way its notification would have. */
  readonly start: StartRun;
  readonly lock: SweepLock;
}

/**
 * How a sweep starts a run: on NATS, the notification MinIO would have sent (queueForIngest); on the
 * embedded default, the run itself, in this process.
 */
export type StartRun = (object: ObjectRecord) => Promise<Started>;

/** `queued`: handed to ingest; `repeat`: a sweep before this one had queued it (ingest has not got to it yet); `ran`: run here to its end. */
export type Started = { readonly kind: 'queued' } | { readonly kind: 'repeat' } | { readonly kind: 'ran'; readonly runId: string; readonly status: 'registered' | 'failed'; readonly error?: { readonly stage: string; readonly code: string } };

export interface SweepOptions {
  readonly bucket: string;
  readonly prefix?: string;
  /** Runs started in one sweep at most (default DEFAULT_SWEEP_LIMIT); the next sweep starts the rest, those started being announced by then. */
  readonly limit?: number;
  /** Uploads younger than this are left alone: their notification may still be on its way. */
  readonly minAgeMs?: number;
  readonly logger: Logger;
  /** Stops the sweep between objects (the process is stopping). */
  readonly signal?: AbortSignal;
}

/** Why a listed object was not started. */
export type SkipReason = 'ignored' | 'recent' | 'forgotten' | 'announced' | 'failed' | 'repeat';

export interface SweepReport {
  readonly bucket: string;
  readonly prefix: string;
  /** Set when another process held the lock: this sweep did nothing. */
  readonly held?: { readonly owner: string; readonly until: string };
  /** Objects looked at. */
  readonly listed: number;
  readonly started: ReadonlyArray<{ readonly key: string; readonly etag: string; readonly versionId?: string } & Started>;
  readonly skipped: Readonly<Record<SkipReason, number>>;
  /** Stopped before the end of the listing: the limit was reached, the lease lost, or the process stopping. */
  readonly truncated: boolean;
  readonly durationMs: number;
}

export const DEFAULT_SWEEP_LIMIT = 100;

/**
 * One sweep, under the lock: pages through the listing (the store asks for the next page only when
 * this gets to it), and starts each upload never announced, at most `limit`. What each listed object
 * costs: nothing for a non-checkpoint or one younger than `minAgeMs` or older than the marks are
 * kept; one read of the marks otherwise, and of the run records when there is no mark.
 */
export async function sweep(ports: SweepPorts, options: SweepOptions): Promise<SweepReport> {
  const started = performance.now();
  const prefix = options.prefix ?? '';
  const skipped: Record<SkipReason, number> = { ignored: 0, recent: 0, forgotten: 0, announced: 0, failed: 0, repeat: 0 };
  const report = (rest: Pick<SweepReport, 'listed' | 'started' | 'truncated'> & Partial<SweepReport>): SweepReport => ({ bucket: options.bucket, prefix, skipped, ...rest, durationMs: Math.round(performance.now() - started) });
  const lease = await ports.lock.acquire();
  if (lease.kind === 'held') {
    options.logger.info({ bucket: options.bucket, holder: lease.owner, until: lease.until }, 'reconcile: another process is sweeping; skipped');
    return report({ held: { owner: lease.owner, until: lease.until.toISOString() }, listed: 0, started: [], truncated: false });
  }
  const limit = options.limit ?? DEFAULT_SWEEP_LIMIT;
  const runs: Array<SweepReport['started'][number]> = [];
  let listed = 0;
  let truncated = false;
  try {
    const stop = AbortSignal.any([lease.lost, ...(options.signal ? [options.signal] : [])]);
    for await (const listing of ports.store.list(options.bucket, prefix)) {
      if (stop.aborted || runs.length >= limit) {
        truncated = true;
        break;
      }
      listed++;
      const object = objectRecord(options.bucket, listing);
      const reason = await whyNotStart(ports, object, listing, options.minAgeMs ?? 0);
      if (reason) {
        skipped[reason]++;
        continue;
      }
      const outcome = await ports.start(object);
      if (outcome.kind === 'repeat') skipped.repeat++;
      else runs.push({ key: object.key, etag: object.etag, ...(object.versionId ? { versionId: object.versionId } : {}), ...outcome });
    }
  } finally {
    await lease.release();
  }
  const done = report({ listed, started: runs, truncated });
  options.logger.info({ bucket: options.bucket, prefix, listed, started: runs.length, skipped, truncated, durationMs: done.durationMs }, `reconcile: ${runs.length} started of ${listed} listed`);
  return done;
}

/** Why an upload needs no run from this sweep, or undefined when it does. */
async function whyNotStart(ports: SweepPorts, object: ObjectRecord, listing: ListedObject, minAgeMs: number): Promise<SkipReason | undefined> {
  if (kindOf(object.key) === 'ignored') return 'ignored';
  const age = Date.now() - listing.lastModified.getTime();
  if (age < minAgeMs) return 'recent';
  // Ingest marks an upload no sooner than it was made: one older than the marks are kept may have
  // been announced and forgotten, and is not judged.
  const { retentionMs } = ports.announced;
  if (retentionMs !== undefined && age > retentionMs) return 'forgotten';
  if (await ports.announced.runOf(object)) return 'announced';
  if (await ports.runState.get(uploadRunId(object))) return 'failed';
  return undefined;
}

/** A listed object as the record its notification would have carried. */
function objectRecord(bucket: string, listing: ListedObject): ObjectRecord {
  return { eventName: 's3:ObjectCreated:Put', bucket, key: listing.key, size: listing.size, etag: listing.etag, ...(listing.versionId ? { versionId: listing.versionId } : {}) };
}

/**
 * On NATS: publishes what MinIO would have (DESIGN §3 MinIO notification) on its subject, so the
 * ingest workers take it as any other, dedupe included. The message id makes a second sweep's
 * repeat one JetStream drops (within the stream's duplicate window) while the first still waits
 * for ingest.
 */
export function queueForIngest(js: JetStreamClient): StartRun {
  return async (object) => {
    const ack = await js.publish(MINIO_SUBJECT, notificationOf(object), { msgID: `reconcile.${uploadId(object)}` });
    return ack.duplicate ? { kind: 'repeat' } : { kind: 'queued' };
  };
}

/** A MinIO notification for one created object: the key query-escaped as MinIO does, the source saying who sent it. */
export function notificationOf(object: ObjectRecord): string {
  const key = encodeURIComponent(object.key).replace(/%20/g, '+');
  return JSON.stringify({
    EventName: object.eventName,
    Key: `${object.bucket}/${key}`,
    Records: [
      {
        eventVersion: '2.0',
        eventSource: 'heimdall:reconcile',
        eventName: object.eventName,
        s3: { bucket: { name: object.bucket }, object: { key, size: object.size, eTag: object.etag, ...(object.versionId ? { versionId: object.versionId } : {}) } },
      },
    ],
  });
}

/** How long a sweeper's lease lasts unless renewed (it is renewed every third of it while it sweeps). */
export const SWEEP_LEASE_MS = 2 * 60_000;
const LOCK_KEY = 'reconcile';

/**
 * The sweep on NATS: the marks the ingest workers keep (KV `heimdall_ingest`, kept as long as the
 * bucket's TTL), run records in `heimdall_runs`, the lease in `heimdall_locks`, and runs queued for
 * the ingest workers. The streams are provisioned (idempotently), so that what is queued is kept
 * even before any worker has started.
 */
export async function natsSweepPorts(runtime: NatsRuntime): Promise<SweepPorts> {
  const { replicas } = runtime.environment.config.nats!;
  await provisionStreams(runtime.nc, replicas);
  const marks = await openKv(runtime.nc, 'heimdall_ingest', replicas);
  const { ttl } = await marks.status();
  return {
    store: runtime.environment.store,
    announced: new KvAnnouncedUploads(marks, ttl > 0 ? ttl : undefined),
    runState: runtime.runState,
    start: queueForIngest(jetstream(runtime.nc)),
    lock: new KvSweepLock(await openKv(runtime.nc, 'heimdall_locks', replicas), LOCK_KEY, lockOwner(), SWEEP_LEASE_MS),
  };
}

/**
 * The sweep on the embedded default: marks and run records in the data dir (those `heimdall run`
 * writes), the lease a file beside them, and each run done here, one after another, from the
 * stored object through the ingest function, as `heimdall run` does from a file.
 */
export function embeddedSweepPorts(options: Omit<InProcessOptions, 'runState' | 'announced'>, ingest: IngestFunction): SweepPorts {
  const { dataDir } = options.config;
  const announced = new FsAnnouncedUploads(dataDir);
  const runState = new FsRunStateStore(dataDir);
  return {
    store: options.store,
    announced,
    runState,
    start: async (object) => {
      const report = await runInProcess({ object, ingest }, { ...options, runState, announced });
      return { kind: 'ran', runId: report.runId, status: report.status, ...(report.error ? { error: { stage: report.error.stage, code: report.error.code } } : {}) };
    },
    lock: new FileSweepLock(join(dataDir, 'reconcile.lock'), lockOwner(), SWEEP_LEASE_MS),
  };
}

/** The periodic sweep leaves alone uploads younger than this (or than its interval, if shorter): MinIO notifies within moments of an upload. */
const PERIODIC_MIN_AGE_MS = 60_000;

/**
 * `serve`'s sweep (HEIMDALL_RECONCILE_INTERVAL): one every `intervalMs`, the first one interval after
 * start, never two at once in this process, and, by the lock, one at a time across processes. A
 * sweep that fails (the bucket missing, the store unreachable) is logged; the next one comes on time.
 */
export function startPeriodicSweep(ports: SweepPorts, options: Pick<SweepOptions, 'bucket' | 'prefix' | 'limit' | 'logger'> & { readonly intervalMs: number }): { stop(): Promise<void> } {
  const stopping = new AbortController();
  let running: Promise<unknown> | undefined;
  const timer = setInterval(() => {
    running ??= sweep(ports, { ...options, minAgeMs: Math.min(PERIODIC_MIN_AGE_MS, options.intervalMs), signal: stopping.signal })
      .catch((error: unknown) => options.logger.warn({ err: error, bucket: options.bucket, intervalMs: options.intervalMs }, 'reconcile: sweep failed; trying again at the next interval'))
      .finally(() => (running = undefined));
  }, options.intervalMs);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      stopping.abort();
      await running;
    },
  };
}
