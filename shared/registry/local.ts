import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PromotionReason } from '../events/schemas.ts';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { writeAtomically } from '../storage/fs.ts';
import { checkExpectedHolder, SHA256_TAG, type AliasChange, type ModelRegistry, type ModelVersion, type RegistrationRequest } from './model-registry.ts';

interface StoredVersion {
  readonly version: string;
  readonly source: string;
  readonly runId: string;
  readonly tags: Record<string, string>;
  readonly params: Record<string, string>;
  readonly metrics: Record<string, number>;
  readonly createdAt: string;
}

interface StoredModel {
  readonly aliases: Record<string, string>;
  /** Alias -> its moves, oldest first. Absent in files written before aliases had a history. */
  history?: Record<string, AliasChange[]>;
  readonly versions: StoredVersion[];
}

interface RegistryFile {
  models: Record<string, StoredModel>;
}

const LOCK_STALE_MS = 30_000;

/**
 * The embedded ModelRegistry: one JSON file in the data dir (`<dataDir>/registry/registry.json`)
 * with versions, aliases and each alias's history, changed only under an exclusive lock (a lock
 * directory), so concurrent registrations of the same model still end with one version and
 * concurrent alias moves each leave their entry; each version's report is kept beside it.
 */
export class LocalModelRegistry implements ModelRegistry {
  private readonly dir: string;
  private readonly file: string;

  constructor(dataDir: string) {
    this.dir = resolve(dataDir, 'registry');
    this.file = join(this.dir, 'registry.json');
  }

  modelUri(version: ModelVersion): string {
    return `models:/${version.name}/${version.version}`;
  }

  async getVersion(name: string, version: string): Promise<ModelVersion | undefined> {
    return this.find(name, (v) => v.version === version, await this.read());
  }

  async getVersionByAlias(name: string, alias: string): Promise<ModelVersion | undefined> {
    const registry = await this.read();
    const holder = registry.models[name]?.aliases[alias];
    return holder === undefined ? undefined : this.find(name, (v) => v.version === holder, registry);
  }

  async findVersionBySha256(name: string, sha256: string): Promise<ModelVersion | undefined> {
    return this.find(name, (v) => v.tags[SHA256_TAG] === sha256, await this.read());
  }

  async listVersions(name: string): Promise<ModelVersion[]> {
    const model = (await this.read()).models[name];
    if (!model) return [];
    return [...model.versions].sort((a, b) => Number(a.version) - Number(b.version)).map((v) => publicVersion(name, v, model));
  }

  async register(request: RegistrationRequest): Promise<{ version: ModelVersion; created: boolean }> {
    return this.locked(async () => {
      const registry = await this.read();
      const model = (registry.models[request.name] ??= { aliases: {}, history: {}, versions: [] });
      const existing = model.versions.find((v) => v.tags[SHA256_TAG] === request.sha256);
      if (existing) return { version: publicVersion(request.name, existing, model), created: false };
      const stored: StoredVersion = {
        version: String(model.versions.reduce((max, v) => Math.max(max, Number(v.version)), 0) + 1),
        source: request.modelUri,
        runId: request.pipelineRunId,
        tags: { ...request.tags, [SHA256_TAG]: request.sha256 },
        params: { ...request.params },
        metrics: { ...request.metrics },
        createdAt: new Date().toISOString(),
      };
      model.versions.push(stored);
      await writeAtomically(join(this.dir, request.name, stored.version, 'report.json'), JSON.stringify(request.report, null, 2));
      await writeAtomically(this.file, JSON.stringify(registry, null, 2));
      return { version: publicVersion(request.name, stored, model), created: true };
    });
  }

  /**
   * `previous` is the version the alias named before this call (the version itself when nothing
   * moved). With `expectedHolder` the holder is compared under the lock: a true compare-and-set.
   */
  async setAlias(name: string, alias: string, version: string, change: { reason: PromotionReason; actor: string; expectedHolder?: string | null }): Promise<{ previous?: string; moved: boolean }> {
    return this.locked(async () => {
      const registry = await this.read();
      const model = registry.models[name];
      if (!model?.versions.some((v) => v.version === version)) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `${name} has no version ${version}`);
      const previous = model.aliases[alias];
      if (previous === version) return { previous, moved: false };
      checkExpectedHolder(name, alias, version, previous, change.expectedHolder);
      model.aliases[alias] = version;
      const history = (model.history ??= {});
      (history[alias] ??= []).push({ version, ...(previous ? { previous } : {}), at: new Date().toISOString(), reason: change.reason, actor: change.actor });
      await writeAtomically(this.file, JSON.stringify(registry, null, 2));
      return { ...(previous ? { previous } : {}), moved: true };
    });
  }

  async aliasHistory(name: string): Promise<Record<string, AliasChange[]>> {
    return (await this.read()).models[name]?.history ?? {};
  }

  private find(name: string, match: (version: StoredVersion) => boolean, registry: RegistryFile): ModelVersion | undefined {
    const model = registry.models[name];
    const stored = model?.versions.find(match);
    return stored && publicVersion(name, stored, model!);
  }

  private async read(): Promise<RegistryFile> {
    try {
      return JSON.parse(await readFile(this.file, 'utf8')) as RegistryFile;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { models: {} };
      throw new HeimdallError(ErrorCodes.REGISTRY_ERROR, `cannot read ${this.file}: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Runs `work` holding the registry lock; a lock older than LOCK_STALE_MS is taken over (its holder died). */
  private async locked<T>(work: () => Promise<T>): Promise<T> {
    const lock = `${this.file}.lock`;
    await mkdir(this.dir, { recursive: true });
    for (let attempt = 0; ; attempt++) {
      try {
        await mkdir(lock);
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        const age = await stat(lock).then((s) => Date.now() - s.mtimeMs, () => 0);
        if (age > LOCK_STALE_MS) await rm(lock, { recursive: true, force: true });
        else if (attempt > 600) throw new HeimdallError(ErrorCodes.REGISTRY_ERROR, `registry lock ${lock} held for too long`);
        else await sleep(50);
      }
    }
    try {
      return await work();
    } finally {
      await rm(lock, { recursive: true, force: true });
    }
  }
}

function publicVersion(name: string, stored: StoredVersion, model: StoredModel): ModelVersion {
  return {
    name,
    version: stored.version,
    source: stored.source,
    runId: stored.runId,
    tags: stored.tags,
    aliases: Object.entries(model.aliases).filter(([, v]) => v === stored.version).map(([alias]) => alias),
    created: stored.createdAt,
  };
}
