import { readdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { writeAtomically } from '../../storage/fs.ts';
import { isRunKey, type RunState, type RunStateStore } from './run-state.ts';

/**
 * The embedded RunStateStore: `<dataDir>/runs/<runId>.json`. One process writes a data dir at a
 * time in the embedded default, so updates are serialized in-process; files are replaced atomically.
 */
export class FsRunStateStore implements RunStateStore {
  private readonly dir: string;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(dataDir: string) {
    this.dir = resolve(dataDir, 'runs');
  }

  async get(runId: string): Promise<RunState | undefined> {
    try {
      return JSON.parse(await readFile(this.path(runId), 'utf8')) as RunState;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
  }

  async list(): Promise<RunState[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const runs = await Promise.all(names.filter((n) => n.endsWith('.json')).map((n) => this.get(n.slice(0, -5))));
    return runs.filter((r): r is RunState => r !== undefined).sort((a, b) => b.updatedAt.localeCompare(a.updatedAt));
  }

  update(runId: string, change: (state: RunState | undefined) => RunState): Promise<RunState> {
    const next = this.queue.then(async () => {
      const state = change(await this.get(runId));
      await writeAtomically(this.path(runId), JSON.stringify(state));
      return state;
    });
    this.queue = next.catch(() => undefined);
    return next;
  }

  private path(runId: string): string {
    if (!isRunKey(runId)) throw new Error(`invalid run id ${runId}`);
    return join(this.dir, `${runId}.json`);
  }
}
