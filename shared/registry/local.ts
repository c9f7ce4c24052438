import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { writeAtomically } from '../storage/fs.ts';
import { SHA256_TAG, type ModelRegistry, type ModelVersion, type RegistrationRequest } from './model-registry.ts';

interface RegistryFile {
  models: Record<string, { aliases: Record<string, string>; versions: Array<ModelVersion & { createdAt: string; metrics: Record<string, number>; params: Record<string, string> }> }>;
}

const LOCK_STALE_MS = 30_000;

/**
 * The embedded ModelRegistry: one JSON file in the data dir (`<dataDir>/registry/registry.json`),
 * updated under an exclusive lock (a lock directory) so concurrent registrations of the same model
 * still end with one version; each version's report is kept beside it.
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

  async getVersionByAlias(name: string, alias: string): Promise<ModelVersion | undefined> {
    const model = (await this.read()).models[name];
    const version = model?.aliases[alias];
    return version ? this.public(name, model.versions.find((v) => v.version === version), model.aliases) : undefined;
  }

  async findVersionBySha256(name: string, sha256: string): Promise<ModelVersion | undefined> {
    const model = (await this.read()).models[name];
    return this.public(name, model?.versions.find((v) => v.tags[SHA256_TAG] === sha256), model?.aliases ?? {});
  }

  async register(request: RegistrationRequest): Promise<{ version: ModelVersion; created: boolean }> {
    return this.locked(async () => {
      const registry = await this.read();
      const model = (registry.models[request.name] ??= { aliases: {}, versions: [] });
      const existing = model.versions.find((v) => v.tags[SHA256_TAG] === request.sha256);
      if (existing) return { version: this.public(request.name, existing, model.aliases)!, created: false };
      const version = String(model.versions.reduce((max, v) => Math.max(max, Number(v.version)), 0) + 1);
      model.versions.push({
        name: request.name,
        version,
        source: request.modelUri,
        runId: request.pipelineRunId,
        tags: { ...request.tags, [SHA256_TAG]: request.sha256 },
        aliases: [],
        params: { ...request.params },
        metrics: { ...request.metrics },
        createdAt: new Date().toISOString(),
      });
      model.aliases[request.alias] = version;
      await writeAtomically(join(this.dir, request.name, version, 'report.json'), JSON.stringify(request.report, null, 2));
      await writeAtomically(this.file, JSON.stringify(registry, null, 2));
      return { version: this.public(request.name, model.versions.at(-1), model.aliases)!, created: true };
    });
  }

  private public(name: string, stored: ModelVersion | undefined, aliases: Record<string, string>): ModelVersion | undefined {
    if (!stored) return undefined;
    return {
      name,
      version: stored.version,
      source: stored.source,
      runId: stored.runId,
      tags: stored.tags,
      aliases: Object.entries(aliases).filter(([, v]) => v === stored.version).map(([a]) => a),
    };
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
