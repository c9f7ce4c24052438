import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import { retryTransient } from '../../bus/nats/transient.ts';
import type { Logger } from '../../logging/index.ts';
import type { RunState, RunStateStore } from './run-state.ts';

const LOST_RACE = new Set<number>([JetStreamApiCodes.StreamWrongLastSequence, JetStreamApiCodes.StreamWrongLastSequenceUnknown]);

/**
 * Run state in the JetStream KV bucket `heimdall_runs` (key = run id), shared by every worker.
 * Updates are compare-and-set on the entry's revision, retried when another worker got there first,
 * so two stages finishing at once both land. Every request is sent again through a leader election
 * of the bucket's stream (transient.ts); a write whose confirmation was lost and that landed anyway
 * fails its repeat on the revision, and the change is applied again to what is there.
 */
export class KvRunStateStore implements RunStateStore {
  constructor(
    private readonly kv: KV,
    private readonly logger?: Logger,
  ) {}

  async get(runId: string): Promise<RunState | undefined> {
    const entry = await this.retry('read run state', () => this.kv.get(runId));
    return entry && entry.operation === 'PUT' ? (entry.json() as RunState) : undefined;
  }

  async list(): Promise<RunState[]> {
    const keys = await this.retry('list runs', async () => {
      const found: string[] = [];
      for await (const key of await this.kv.keys()) found.push(key);
      return found;
    });
    const runs = await Promise.all(keys.map((key) => this.get(key)));
    return runs.filter((r): r is RunState => r !== undefined).sort((a, b) => b.updatedAt.localeCompare(a.updatedAt));
  }

  async update(runId: string, change: (state: RunState | undefined) => RunState): Promise<RunState> {
    for (let attempt = 0; ; attempt++) {
      const entry = await this.retry('read run state', () => this.kv.get(runId));
      const current = entry && entry.operation === 'PUT' ? (entry.json() as RunState) : undefined;
      const next = change(current);
      try {
        await this.retry('write run state', () => (entry ? this.kv.update(runId, JSON.stringify(next), entry.revision) : this.kv.create(runId, JSON.stringify(next))));
        return next;
      } catch (error) {
        // Lost the race (wrong last sequence): read again and re-apply.
        if (!(error instanceof JetStreamApiError && LOST_RACE.has(error.code)) || attempt >= 20) throw error;
      }
    }
  }

  private retry<T>(what: string, request: () => Promise<T>): Promise<T> {
    return retryTransient(what, request, this.logger ? { logger: this.logger } : {});
  }
}
