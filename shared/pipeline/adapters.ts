import type { Config } from '../config/index.ts';
import type { ModelRegistry } from '../registry/model-registry.ts';
import { LocalModelRegistry } from '../registry/local.ts';
import { MlflowModelRegistry } from '../registry/mlflow/registry.ts';
import { FsObjectStore } from '../storage/fs.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { S3ObjectStore } from '../storage/s3.ts';

export interface Adapters {
  readonly store: ObjectStore;
  readonly registry: ModelRegistry;
}

/**
 * Picks each port's adapter from configuration (DESIGN §2: never by `if (test)`): a configured
 * service wins, else the embedded adapter in the data dir. Ports are independent, so NATS with the
 * filesystem store and the local registry is a valid combination.
 */
export function createAdapters(config: Config): Adapters {
  return {
    store: config.s3 ? new S3ObjectStore(config.s3) : new FsObjectStore(config.dataDir),
    registry: config.mlflow ? new MlflowModelRegistry(config.mlflow) : new LocalModelRegistry(config.dataDir),
  };
}
