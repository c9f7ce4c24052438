import type { EventType } from '../../events/schemas.ts';

/**
 * Subjects of DESIGN §3: every event on `heimdall.events.<type>` with the type's `heimdall.` prefix
 * dropped (heimdall.model.exported -> heimdall.events.model.exported); MinIO notifications arrive
 * on `heimdall.minio.checkpoints`.
 */
export const EVENTS_STREAM = 'HEIMDALL_EVENTS';
export const MINIO_STREAM = 'HEIMDALL_MINIO';
export const MINIO_SUBJECT = 'heimdall.minio.checkpoints';
export const RUNS_BUCKET = 'heimdall_runs';
export const INGEST_BUCKET = 'heimdall_ingest';

const PREFIX = 'heimdall.events.';

export function subjectOf(type: EventType): string {
  return PREFIX + type.replace(/^heimdall\./, '');
}
