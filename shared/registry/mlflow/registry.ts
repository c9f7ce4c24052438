import { stat } from 'node:fs/promises';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { SHA256_TAG, type ModelRegistry, type ModelVersion, type RegistrationRequest } from '../model-registry.ts';
import { isMlflowError, MlflowClient, type MlflowConnection } from './client.ts';
import { modelDirectoryFiles, ONNX_FILE } from './mlmodel.ts';

export interface MlflowRegistryOptions extends MlflowConnection {
  readonly experimentName: string;
}

// Shapes of MLflow's JSON answers (mlflow/protos/service.proto, model_registry.proto), the fields we read.
interface Tag {
  readonly key: string;
  readonly value: string;
}
interface MlflowModelVersion {
  readonly name: string;
  readonly version: string;
  readonly source: string;
  readonly run_id?: string;
  readonly status?: 'PENDING_REGISTRATION' | 'FAILED_REGISTRATION' | 'READY';
  readonly status_message?: string;
  readonly tags?: readonly Tag[];
  readonly aliases?: readonly string[];
}
interface MlflowRun {
  readonly info: { readonly run_id: string; readonly artifact_uri: string };
  readonly data?: { readonly params?: readonly Tag[]; readonly metrics?: ReadonlyArray<{ key: string }> };
}

/** Run tags that find the MLflow run of a model again (a redelivered event reuses it). */
const RUN_SHA256_TAG = 'heimdall.sha256';
const RUN_PIPELINE_TAG = 'heimdall.pipeline_run_id';
/** runs/log-batch limits (MLflow REST API, LogBatch "Request Limits"). */
const BATCH = { params: 100, tags: 100, total: 1000 };
const READY_WAIT_MS = 60_000;

/**
 * The ModelRegistry on an MLflow tracking server, over its REST API (no Python). A registration:
 * experiment (created or restored), one MLflow run per model with params, metrics and tags, the
 * MLflow model directory (model.onnx, MLmodel, env files) and the pipeline report as the run's
 * artifacts, then the registered model version (source = the run's `model/` folder) and the
 * alias. The version is created last, so a failure on the way leaves no version behind.
 */
export class MlflowModelRegistry implements ModelRegistry {
  private readonly client: MlflowClient;

  constructor(private readonly options: MlflowRegistryOptions) {
    this.client = new MlflowClient(options);
  }

  modelUri(version: ModelVersion): string {
    return `models:/${version.name}/${version.version}`;
  }

  async getVersionByAlias(name: string, alias: string): Promise<ModelVersion | undefined> {
    // registered-models/get lists aliases; registered-models/alias answers a missing alias with
    // INVALID_PARAMETER_VALUE, which cannot be told from a real error without reading the message.
    const model = await this.client
      .get<{ registered_model: { aliases?: Array<{ alias: string; version: string }> } }>('registered-models/get', { name })
      .catch((error: unknown) => {
        if (isMlflowError(error, 'RESOURCE_DOES_NOT_EXIST')) return undefined;
        throw error;
      });
    const entry = model?.registered_model.aliases?.find((a) => a.alias === alias);
    if (!entry) return undefined;
    const { model_version } = await this.client.get<{ model_version: MlflowModelVersion }>('model-versions/get', { name, version: entry.version });
    return toModelVersion(model_version);
  }

  async findVersionBySha256(name: string, sha256: string): Promise<ModelVersion | undefined> {
    const [first] = await this.versionsWithSha256(name, sha256);
    if (!first) return undefined;
    // Search results leave out aliases; model-versions/get has them.
    const { model_version } = await this.client.get<{ model_version: MlflowModelVersion }>('model-versions/get', { name, version: first.version });
    return toModelVersion(model_version);
  }

  async register(request: RegistrationRequest): Promise<{ version: ModelVersion; created: boolean }> {
    const existing = await this.findVersionBySha256(request.name, request.sha256);
    if (existing) return { version: existing, created: false };

    const run = await this.runFor(await this.experimentId(), request);
    let mine: MlflowModelVersion;
    try {
      await this.logRun(run, request);
      await this.uploadModel(run, request);
      await this.client.post('runs/update', { run_id: run.info.run_id, status: 'FINISHED', end_time: Date.now() });
      await this.ensureRegisteredModel(request.name);
      mine = await this.createVersion(run, request);
    } catch (error) {
      await this.client.post('runs/update', { run_id: run.info.run_id, status: 'FAILED', end_time: Date.now() }).catch(() => undefined);
      throw error;
    }

    const winner = await this.settle(request, mine);
    try {
      await this.client.post('registered-models/alias', { name: request.name, alias: request.alias, version: winner.version });
    } catch (error) {
      // A version without its alias would be found by sha256 and never get the alias: take it back.
      if (winner.version === mine.version) await this.deleteVersion(request.name, mine.version).catch(() => undefined);
      throw error;
    }
    const version = toModelVersion({ ...winner, aliases: [...new Set([...(winner.aliases ?? []), request.alias])] });
    return { version, created: winner.version === mine.version };
  }

  /**
   * Concurrent registrations of the same model (two workers, a redelivery racing the first
   * delivery) can both find no version and both create one. MLflow has no conditional create, so
   * each registrant settles after creating: of all versions carrying this sha256, the lowest
   * numbered wins and every other is deleted. Version numbers are assigned in commit order, so
   * when a registrant's create returns, every lower version is already visible: all registrants
   * agree on the winner, none ever deletes it, and deleting a loser twice is harmless. A loser's
   * run goes too, unless the winner's version came from the same run.
   */
  private async settle(request: RegistrationRequest, mine: MlflowModelVersion): Promise<MlflowModelVersion> {
    const [winner = mine, ...losers] = await this.versionsWithSha256(request.name, request.sha256);
    for (const loser of losers) await this.deleteVersion(request.name, loser.version);
    if (winner.version !== mine.version && winner.run_id !== mine.run_id && mine.run_id) {
      await this.client.post('runs/delete', { run_id: mine.run_id }).catch(() => undefined);
    }
    return winner;
  }

  /** Versions of `name` tagged with this sha256, lowest version number first. */
  private async versionsWithSha256(name: string, sha256: string): Promise<MlflowModelVersion[]> {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `not a sha256: ${sha256}`);
    const { model_versions = [] } = await this.client.get<{ model_versions?: MlflowModelVersion[] }>('model-versions/search', {
      filter: `name = ${quote(name)} and tags.${SHA256_TAG} = '${sha256}'`,
      max_results: '1000',
    });
    return model_versions.sort((a, b) => Number(a.version) - Number(b.version));
  }

  /**
   * The experiment's id: found by name, restored when deleted, created when missing (also by a
   * concurrent registrant). Looked up on every registration: someone may delete it meanwhile.
   */
  private async experimentId(): Promise<string> {
    const name = this.options.experimentName;
    const find = () => this.client.get<{ experiment: { experiment_id: string; lifecycle_stage: string } }>('experiments/get-by-name', { experiment_name: name });
    let found;
    try {
      found = await find();
    } catch (error) {
      if (!isMlflowError(error, 'RESOURCE_DOES_NOT_EXIST')) throw error;
      try {
        return (await this.client.post<{ experiment_id: string }>('experiments/create', { name })).experiment_id;
      } catch (createError) {
        if (!isMlflowError(createError, 'RESOURCE_ALREADY_EXISTS')) throw createError;
        found = await find();
      }
    }
    const { experiment_id, lifecycle_stage } = found.experiment;
    if (lifecycle_stage === 'deleted') await this.client.post('experiments/restore', { experiment_id });
    return experiment_id;
  }

  /** The MLflow run of this model: the one an earlier, interrupted registration left, else a new one. */
  private async runFor(experimentId: string, request: RegistrationRequest): Promise<MlflowRun> {
    const { runs = [] } = await this.client.post<{ runs?: MlflowRun[] }>('runs/search', {
      experiment_ids: [experimentId],
      filter: `tags.\`${RUN_SHA256_TAG}\` = '${request.sha256}'`,
      run_view_type: 'ACTIVE_ONLY',
      order_by: ['attributes.start_time ASC'],
      max_results: 1,
    });
    if (runs[0]) return runs[0];
    const { run } = await this.client.post<{ run: MlflowRun }>('runs/create', {
      experiment_id: experimentId,
      run_name: `heimdall-${request.pipelineRunId}`,
      start_time: Date.now(),
      tags: [
        { key: RUN_SHA256_TAG, value: request.sha256 },
        { key: RUN_PIPELINE_TAG, value: request.pipelineRunId },
        { key: 'mlflow.source.name', value: 'heimdall' },
        { key: 'mlflow.source.type', value: 'JOB' },
      ],
    });
    return run;
  }

  /**
   * Params, metrics and tags through runs/log-batch, split to its limits. On a reused run, params
   * and metrics already there are not logged again (MLflow refuses a changed param and appends a
   * metric to its history).
   */
  private async logRun(run: MlflowRun, request: RegistrationRequest): Promise<void> {
    const loggedParams = new Set(run.data?.params?.map((p) => p.key));
    const loggedMetrics = new Set(run.data?.metrics?.map((m) => m.key));
    let params = Object.entries({ ...request.params, sha256: request.sha256 })
      .filter(([key]) => !loggedParams.has(key))
      .map(([key, value]) => ({ key, value }));
    const timestamp = Date.now();
    let metrics = Object.entries(request.metrics)
      .filter(([key, value]) => !loggedMetrics.has(key) && Number.isFinite(value))
      .map(([key, value]) => ({ key, value, timestamp, step: 0 }));
    let tags = Object.entries(request.tags).map(([key, value]) => ({ key, value }));
    while (params.length + metrics.length + tags.length > 0) {
      const batch = { params: params.slice(0, BATCH.params), tags: tags.slice(0, BATCH.tags), metrics: [] as typeof metrics };
      batch.metrics = metrics.slice(0, BATCH.total - batch.params.length - batch.tags.length);
      await this.client.post('runs/log-batch', { run_id: run.info.run_id, ...batch });
      params = params.slice(batch.params.length);
      metrics = metrics.slice(batch.metrics.length);
      tags = tags.slice(batch.tags.length);
    }
  }

  /** The run's artifacts: `model/` (model.onnx first, MLmodel last) and `report.json`. */
  private async uploadModel(run: MlflowRun, request: RegistrationRequest): Promise<void> {
    const root = artifactRoot(run.info.artifact_uri);
    const { size } = await stat(request.modelPath);
    await this.client.uploadArtifact(`${root}/model/${ONNX_FILE}`, { file: request.modelPath, size });
    const files = modelDirectoryFiles({
      runId: run.info.run_id,
      createdAt: new Date(),
      metadata: { sha256: request.sha256, pipeline_run_id: request.pipelineRunId, onnx_uri: request.modelUri },
    });
    const { MLmodel, ...environment } = files;
    for (const [name, content] of Object.entries(environment)) await this.client.uploadArtifact(`${root}/model/${name}`, Buffer.from(content));
    await this.client.uploadArtifact(`${root}/report.json`, Buffer.from(JSON.stringify(request.report, null, 2)));
    await this.client.uploadArtifact(`${root}/model/MLmodel`, Buffer.from(MLmodel!));
  }

  private async ensureRegisteredModel(name: string): Promise<void> {
    await this.client.post('registered-models/create', { name, description: 'LocalizationNet ONNX models registered by Heimdall' }).catch((error: unknown) => {
      if (!isMlflowError(error, 'RESOURCE_ALREADY_EXISTS')) throw error;
    });
  }

  /** Creates the version and waits until MLflow has it READY (file-like sources are READY at once). */
  private async createVersion(run: MlflowRun, request: RegistrationRequest): Promise<MlflowModelVersion> {
    let { model_version: version } = await this.client.post<{ model_version: MlflowModelVersion }>('model-versions/create', {
      name: request.name,
      source: `${run.info.artifact_uri}/model`,
      run_id: run.info.run_id,
      description: `Heimdall pipeline run ${request.pipelineRunId}`,
      tags: Object.entries({ ...request.tags, [SHA256_TAG]: request.sha256, pipeline_run_id: request.pipelineRunId }).map(([key, value]) => ({ key, value })),
    });
    const deadline = Date.now() + READY_WAIT_MS;
    while (version.status === 'PENDING_REGISTRATION' && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      ({ model_version: version } = await this.client.get<{ model_version: MlflowModelVersion }>('model-versions/get', { name: request.name, version: version.version }));
    }
    if (version.status !== undefined && version.status !== 'READY') {
      await this.deleteVersion(request.name, version.version).catch(() => undefined);
      throw new HeimdallError(ErrorCodes.REGISTRY_ERROR, `MLflow did not make ${request.name} version ${version.version} ready: ${version.status} ${version.status_message ?? ''}`.trim());
    }
    return version;
  }

  private async deleteVersion(name: string, version: string): Promise<void> {
    await this.client.delete('model-versions/delete', { name, version }).catch((error: unknown) => {
      if (!isMlflowError(error, 'RESOURCE_DOES_NOT_EXIST')) throw error;
    });
  }
}

/**
 * The path of a run's artifact folder in the proxied artifact store: `mlflow-artifacts:/<exp>/<run>/artifacts`
 * -> `<exp>/<run>/artifacts` (mlflow/store/artifact/mlflow_artifacts_repo.py resolves the same uri
 * against the tracking server).
 */
function artifactRoot(artifactUri: string): string {
  const match = /^mlflow-artifacts:\/([^/].*)$/.exec(artifactUri);
  if (!match) {
    throw new HeimdallError(
      ErrorCodes.REGISTRY_REJECTED,
      `the run's artifact location ${artifactUri} is not served by the tracking server: start MLflow with --serve-artifacts (the default) and no --default-artifact-root outside mlflow-artifacts:/`,
    );
  }
  return match[1]!.replace(/\/+$/, '');
}

/** A string literal of MLflow's search filter syntax (single quotes; a quote inside is not expressible). */
function quote(value: string): string {
  if (value.includes("'")) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `a model name with a quote cannot be searched in MLflow: ${value}`);
  return `'${value}'`;
}

function toModelVersion(version: MlflowModelVersion): ModelVersion {
  return {
    name: version.name,
    version: version.version,
    source: version.source,
    runId: version.run_id ?? '',
    tags: Object.fromEntries((version.tags ?? []).map((t) => [t.key, t.value])),
    aliases: version.aliases ?? [],
  };
}
