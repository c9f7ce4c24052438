import { JetStreamApiError } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { RunState, RunStateStore } from './run-state.ts';

/**
 * Run state in the JetStream KV bucket `heimdall_runs` (key = run id), shared by every worker.
 * Updates are compare-and-set on the entry's revision, retried when another worker got there first,
 * so two stages finishing at once both land.
 */
export class KvRunStateStore implements RunStateStore {
  constructor(private readonly kv: KV) {}

  async get(runId: string): Promise<RunState | undefined> {
    const entry = await this.kv.get(runId);
    return entry && entry.operation === 'PUT' ? (entry.json() as RunState) : undefined;
  }

  async list(): Promise<RunState[]> {
    const keys: string[] = [];
    for await (const key of await this.kv.keys()) keys.push(key);
    const runs = await Promise.all(keys.map((key) => this.get(key)));
    return runs.filter((r): r is RunState => r !== undefined).sort((a, b) => b.updatedAt.localeCompare(a.updatedAt));
  }

  async update(runId: string, change: (state: RunState | undefined) => RunState): Promise<RunState> {
    for (let attempt = 0; ; attempt++) {
      const entry = await this.kv.get(runId);
      const current = entry && entry.operation === 'PUT' ? (entry.json() as RunState) : undefined;
      const next = change(current);
      try {
        if (entry) await this.kv.update(runId, JSON.stringify(next), entry.revision);
        else await this.kv.create(runId, JSON.stringify(next));
        return next;
      } catch (error) {
        // Lost the race (wrong last sequence): read again and re-apply.
        if (!(error instanceof JetStreamApiError) || attempt >= 20) throw error;
      }
    }
  }
}
