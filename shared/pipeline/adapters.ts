import type { Config } from '../config/index.ts';
import type { ModelRegistry } from '../registry/model-registry.ts';
import { LocalModelRegistry } from '../registry/local.ts';
import { FsObjectStore } from '../storage/fs.ts';
import type { ObjectStore } from '../storage/object-store.ts';

export interface Adapters {
  readonly store: ObjectStore;
  readonly registry: ModelRegistry;
}

/**
 * Picks each port's adapter from configuration (DESIGN §2: never by `if (test)`): a configured
 * service wins, else the embedded adapter in the data dir. Ports are independent, so NATS with the
 * filesystem store and the local registry is a valid combination. A service's adapter is loaded
 * only when it is configured: the S3 client alone is a large part of the CLI's start-up.
 */
export async function createAdapters(config: Config): Promise<Adapters> {
  const [store, registry] = await Promise.all([
    config.s3 ? import('../storage/s3.ts').then(({ S3ObjectStore }) => new S3ObjectStore(config.s3!)) : new FsObjectStore(config.dataDir),
    config.mlflow ? import('../registry/mlflow/registry.ts').then(({ MlflowModelRegistry }) => new MlflowModelRegistry(config.mlflow!)) : new LocalModelRegistry(config.dataDir),
  ]);
  return { store, registry };
}
