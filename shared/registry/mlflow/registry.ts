import { stat } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { basename } from 'node:path';
import type { PromotionReason } from '../../events/schemas.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { checkExpectedHolder, PIPELINE_RUN_TAG, SHA256_TAG, TRAINING_METRIC_PREFIX, type AliasChange, type ModelRegistry, type ModelVersion, type RegistrationRequest } from '../model-registry.ts';
import { isMlflowError, MlflowClient, MlflowError, type MlflowConnection } from './client.ts';
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
  readonly creation_timestamp?: number | string;
  readonly status?: 'PENDING_REGISTRATION' | 'FAILED_REGISTRATION' | 'READY';
  readonly status_message?: string;
  readonly tags?: readonly Tag[];
  readonly aliases?: readonly string[];
}
interface MlflowRegisteredModel {
  readonly aliases?: ReadonlyArray<{ alias: string; version: string }>;
  readonly tags?: readonly Tag[];
}
interface MlflowRun {
  readonly info: { readonly run_id: string; readonly artifact_uri: string };
  readonly data?: { readonly params?: readonly Tag[]; readonly metrics?: ReadonlyArray<{ key: string }> };
}
interface LoggedModelInfo {
  readonly model_id: string;
  readonly artifact_uri: string;
}

/** Run tags that find the MLflow run of a model again (a redelivered event reuses it). */
const RUN_SHA256_TAG = 'heimdall.sha256';
const RUN_PIPELINE_TAG = 'heimdall.pipeline_run_id';
/** Version tag naming our MLflow run (the version's run_id may be the training run instead). */
const VERSION_RUN_TAG = 'heimdall.mlflow_run_id';
/** Registered-model tag holding an alias's moves (JSON AliasChange[], oldest first). */
const ALIAS_HISTORY_TAG_PREFIX = 'heimdall.alias_history.';
/** Moves kept per alias: about 120 bytes each, far inside MLflow's 100 000-character tag value. */
const ALIAS_HISTORY_LIMIT = 50;
/** runs/log-batch limits (MLflow REST API, LogBatch "Request Limits"); logged-models/create takes 100 params. */
const BATCH = { params: 100, tags: 100, total: 1000 };
const SEARCH_PAGE = 1000;
const READY_WAIT_MS = 60_000;

/**
 * The ModelRegistry on an MLflow 3 tracking server, over its REST API (no Python). A registration:
 * the experiment (created or restored); one MLflow run per pipeline run with params, metrics,
 * tags and the pipeline report; a LoggedModel (source run: the training run when known, else
 * ours) holding the MLflow model directory as `mlflow.onnx.log_model` writes it, with its params
 * and the run's metrics linked to it, finalized READY; then the registered model version (source
 * `models:/m-…`). The version is created last, so a failure on the way leaves no version behind.
 * Aliases move only through `setAlias`, which keeps each alias's history in a registered-model tag.
 */
export class MlflowModelRegistry implements ModelRegistry {
  private readonly client: MlflowClient;

  constructor(private readonly options: MlflowRegistryOptions) {
    this.client = new MlflowClient(options);
  }

  modelUri(version: ModelVersion): string {
    return `models:/${version.name}/${version.version}`;
  }

  async getVersion(name: string, version: string): Promise<ModelVersion | undefined> {
    const found = await this.client.get<{ model_version: MlflowModelVersion }>('model-versions/get', { name, version }).catch((error: unknown) => {
      if (isMlflowError(error, 'RESOURCE_DOES_NOT_EXIST')) return undefined;
      throw error;
    });
    return found && toModelVersion(found.model_version);
  }

  async getVersionByAlias(name: string, alias: string): Promise<ModelVersion | undefined> {
    // registered-models/get lists aliases; registered-models/alias answers a missing alias with
    // INVALID_PARAMETER_VALUE, which cannot be told from a real error without reading the message.
    const entry = (await this.registeredModel(name))?.aliases?.find((a) => a.alias === alias);
    return entry && this.getVersion(name, entry.version);
  }

  async findVersionBySha256(name: string, sha256: string): Promise<ModelVersion | undefined> {
    const [first] = await this.versionsWithSha256(name, sha256);
    // Search results leave out aliases; model-versions/get has them.
    return first && this.getVersion(name, first.version);
  }

  async listVersions(name: string): Promise<ModelVersion[]> {
    const model = await this.registeredModel(name);
    if (!model) return [];
    const versions = await this.searchVersions(`name = ${quote(name)}`);
    // Search results leave out aliases: the registered model lists them.
    const aliasesOf = (version: string) => (model.aliases ?? []).filter((a) => a.version === version).map((a) => a.alias);
    return versions.map((v) => toModelVersion({ ...v, aliases: aliasesOf(v.version) }));
  }

  async register(request: RegistrationRequest): Promise<{ version: ModelVersion; created: boolean }> {
    const existing = await this.findVersionBySha256(request.name, request.sha256);
    if (existing) return { version: existing, created: false };

    const experimentId = await this.experimentId();
    const run = await this.runFor(experimentId, request);
    const sourceRunId = (await this.trainingRun(request)) ?? run.info.run_id;
    let model: LoggedModelInfo | undefined;
    let mine: MlflowModelVersion;
    try {
      model = await this.createLoggedModel(experimentId, sourceRunId, request);
      await this.logRun(run, request, model.model_id);
      if (sourceRunId !== run.info.run_id) await this.logTrainingRun(sourceRunId, request, model.model_id);
      await this.client.post('runs/outputs', { run_id: sourceRunId, models: [{ model_id: model.model_id, step: 0 }] });
      await this.uploadModel(model, sourceRunId, request);
      await this.client.uploadArtifact(`${artifactRoot(run.info.artifact_uri)}/report.json`, Buffer.from(JSON.stringify(request.report, null, 2)));
      await this.client.patch(`logged-models/${model.model_id}`, { model_id: model.model_id, status: 'LOGGED_MODEL_READY' });
      await this.client.post('runs/update', { run_id: run.info.run_id, status: 'FINISHED', end_time: Date.now() });
      await this.ensureRegisteredModel(request.name);
      mine = await this.createVersion(model, sourceRunId, run.info.run_id, request);
    } catch (error) {
      if (model) await this.client.delete(`logged-models/${model.model_id}`, {}).catch(() => undefined);
      await this.client.post('runs/update', { run_id: run.info.run_id, status: 'FAILED', end_time: Date.now() }).catch(() => undefined);
      throw error;
    }
    const winner = await this.settle(request, mine, model.model_id, run.info.run_id);
    return { version: toModelVersion(winner), created: winner.version === mine.version };
  }

  /**
   * `previous` is the version the alias named before this call (the version itself when nothing
   * moved). With `expectedHolder` the alias is read just before the move and compared: MLflow has
   * no conditional write (no compare-and-set on registered-models/alias), so a move by someone else
   * in the few milliseconds between that read and our write is not seen; anything earlier is refused.
   */
  async setAlias(name: string, alias: string, version: string, change: { reason: PromotionReason; actor: string; expectedHolder?: string | null }): Promise<{ previous?: string; moved: boolean }> {
    if (!(await this.getVersion(name, version))) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `${name} has no version ${version}`);
    const model = await this.registeredModel(name);
    const previous = holderOf(model, alias);
    if (previous === version) return { previous, moved: false };
    checkExpectedHolder(name, alias, version, previous, change.expectedHolder);
    // History first, then the alias: a crash in between leaves an entry that the retry's own
    // entry would repeat, so a move already recorded last is not recorded twice. (MLflow has no
    // conditional write: two concurrent moves of one alias may each keep only their own entry.)
    const key = `${ALIAS_HISTORY_TAG_PREFIX}${alias}`;
    const history = historyOf(model, alias);
    const last = history.at(-1);
    const recorded = last?.version !== version || last.previous !== previous;
    if (recorded) {
      history.push({ version, ...(previous ? { previous } : {}), at: new Date().toISOString(), reason: change.reason, actor: change.actor });
      await this.client.post('registered-models/set-tag', { name, key, value: JSON.stringify(history.slice(-ALIAS_HISTORY_LIMIT)) });
    }
    try {
      await this.client.post('registered-models/alias', { name, alias, version });
    } catch (error) {
      if (recorded) await this.undoHistory(name, alias, version, key, model?.tags?.find((t) => t.key === key)?.value);
      throw error;
    }
    return { ...(previous ? { previous } : {}), moved: true };
  }

  /**
   * After a failed alias write: puts the history tag back as it was (deleted when there was none),
   * so that no move that did not happen is recorded; unless the alias names `version` after all
   * (the write went through and only its answer was lost), when the entry is true and stays.
   * Best effort: when MLflow cannot be reached to undo, the entry stays, and the retry's move,
   * the same one, is not recorded twice (see setAlias).
   */
  private async undoHistory(name: string, alias: string, version: string, key: string, before: string | undefined): Promise<void> {
    try {
      if (holderOf(await this.registeredModel(name), alias) === version) return;
      if (before === undefined) await this.client.delete('registered-models/delete-tag', { name, key });
      else await this.client.post('registered-models/set-tag', { name, key, value: before });
    } catch {
      // the original error is the one to report
    }
  }

  async aliasHistory(name: string): Promise<Record<string, AliasChange[]>> {
    const model = await this.registeredModel(name);
    const aliases = (model?.tags ?? []).filter((t) => t.key.startsWith(ALIAS_HISTORY_TAG_PREFIX)).map((t) => t.key.slice(ALIAS_HISTORY_TAG_PREFIX.length));
    return Object.fromEntries(aliases.map((alias) => [alias, historyOf(model, alias)]));
  }

  /**
   * Concurrent registrations of the same model (two workers, a redelivery racing the first
   * delivery) can both find no version and both create one. MLflow has no conditional create, so
   * each registrant settles after creating: of all versions carrying this sha256, the lowest
   * numbered wins and every other is deleted. Version numbers are assigned in commit order, so
   * when a registrant's create returns, every lower version is already visible: all registrants
   * agree on the winner, none ever deletes it, and deleting a loser twice is harmless. A loser's
   * LoggedModel goes too, and its pipeline run unless the winner came from the same run.
   */
  private async settle(request: RegistrationRequest, mine: MlflowModelVersion, modelId: string, runId: string): Promise<MlflowModelVersion> {
    const [winner = mine, ...losers] = await this.versionsWithSha256(request.name, request.sha256);
    for (const loser of losers) await this.deleteVersion(request.name, loser.version);
    if (winner.version === mine.version) return winner;
    await this.client.delete(`logged-models/${modelId}`, {}).catch(() => undefined);
    const winnerRun = winner.tags?.find((t) => t.key === VERSION_RUN_TAG)?.value;
    if (winnerRun !== runId) await this.client.post('runs/delete', { run_id: runId }).catch(() => undefined);
    // Search results leave out aliases; model-versions/get has them.
    return (await this.client.get<{ model_version: MlflowModelVersion }>('model-versions/get', { name: request.name, version: winner.version })).model_version;
  }

  /** Versions of `name` tagged with this sha256, lowest version number first. */
  private async versionsWithSha256(name: string, sha256: string): Promise<MlflowModelVersion[]> {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new HeimdallError(ErrorCodes.REGISTRY_REJECTED, `not a sha256: ${sha256}`);
    return this.searchVersions(`name = ${quote(name)} and tags.${SHA256_TAG} = '${sha256}'`);
  }

  /** Every version matching `filter` (all pages), lowest version number first. */
  private async searchVersions(filter: string): Promise<MlflowModelVersion[]> {
    const versions: MlflowModelVersion[] = [];
    let pageToken: string | undefined;
    do {
      const page = await this.client.get<{ model_versions?: MlflowModelVersion[]; next_page_token?: string }>('model-versions/search', {
        filter,
        max_results: String(SEARCH_PAGE),
        ...(pageToken ? { page_token: pageToken } : {}),
      });
      versions.push(...(page.model_versions ?? []));
      pageToken = page.next_page_token || undefined;
    } while (pageToken);
    return versions.sort((a, b) => Number(a.version) - Number(b.version));
  }

  private async registeredModel(name: string): Promise<MlflowRegisteredModel | undefined> {
    const found = await this.client.get<{ registered_model: MlflowRegisteredModel }>('registered-models/get', { name }).catch((error: unknown) => {
      if (isMlflowError(error, 'RESOURCE_DOES_NOT_EXIST')) return undefined;
      throw error;
    });
    return found?.registered_model;
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
    const user = osUser();
    const { run } = await this.client.post<{ run: MlflowRun }>('runs/create', {
      experiment_id: experimentId,
      run_name: `heimdall-${request.pipelineRunId}`,
      start_time: Date.now(),
      user_id: user,
      tags: [{ key: RUN_SHA256_TAG, value: request.sha256 }, { key: RUN_PIPELINE_TAG, value: request.pipelineRunId }, ...contextTags(user)],
    });
    return run;
  }

  /** The training run's id when the request names one this server has (a run elsewhere cannot be linked). */
  private async trainingRun(request: RegistrationRequest): Promise<string | undefined> {
    if (!request.trainingRunId) return undefined;
    const found = await this.client.get<{ run: MlflowRun }>('runs/get', { run_id: request.trainingRunId }).catch((error: unknown) => {
      if (isMlflowError(error, 'RESOURCE_DOES_NOT_EXIST') || isMlflowError(error, 'INVALID_PARAMETER_VALUE')) return undefined;
      throw error;
    });
    return found?.run.info.run_id;
  }

  /** The LoggedModel, with the request's params (logged-models/create takes the first 100). */
  private async createLoggedModel(experimentId: string, sourceRunId: string, request: RegistrationRequest): Promise<LoggedModelInfo> {
    const params = Object.entries({ ...request.params, sha256: request.sha256 }).map(([key, value]) => ({ key, value }));
    const { model } = await this.client.post<{ model: { info: LoggedModelInfo } }>('logged-models', {
      experiment_id: experimentId,
      name: request.name,
      source_run_id: sourceRunId,
      params: params.slice(0, BATCH.params),
      tags: [{ key: RUN_SHA256_TAG, value: request.sha256 }, { key: RUN_PIPELINE_TAG, value: request.pipelineRunId }, ...contextTags(osUser())],
    });
    for (let at = BATCH.params; at < params.length; at += BATCH.params) {
      await this.client.post(`logged-models/${model.info.model_id}/params`, { model_id: model.info.model_id, params: params.slice(at, at + BATCH.params) });
    }
    return model.info;
  }

  /** Params, metrics and tags on our run; the metrics linked to the LoggedModel by `model_id`. */
  private async logRun(run: MlflowRun, request: RegistrationRequest, modelId: string): Promise<void> {
    await this.logOnce(run.info.run_id, { ...request.params, sha256: request.sha256 }, request.metrics, request.tags, modelId);
  }

  /**
   * The training run is the version's run: it gets the training metrics (linked to the
   * LoggedModel) and the params it lacks (the trainer's own values stay as they are).
   */
  private async logTrainingRun(runId: string, request: RegistrationRequest, modelId: string): Promise<void> {
    const training = Object.fromEntries(Object.entries(request.metrics).filter(([key]) => key.startsWith(TRAINING_METRIC_PREFIX)));
    await this.logOnce(runId, request.params, training, {}, modelId);
  }

  /**
   * Logs what the run lacks through runs/log-batch, split to its limits: params and metrics already
   * there are not logged again (MLflow refuses a changed param and appends a metric to its history).
   * A registrant racing us on the same run may insert a param between our read and our write
   * (MLflow answers 400 for the duplicate): one more pass logs what is still missing.
   */
  private async logOnce(runId: string, params: Readonly<Record<string, string>>, metrics: Readonly<Record<string, number>>, tags: Readonly<Record<string, string>>, modelId: string): Promise<void> {
    const pass = async () => {
      const { run } = await this.client.get<{ run: MlflowRun }>('runs/get', { run_id: runId });
      await this.logBatches(run, params, metrics, tags, modelId);
    };
    await pass().catch((error: unknown) => {
      if (!(error instanceof MlflowError) || error.code !== ErrorCodes.REGISTRY_REJECTED) throw error;
      return pass();
    });
  }

  private async logBatches(run: MlflowRun, allParams: Readonly<Record<string, string>>, allMetrics: Readonly<Record<string, number>>, allTags: Readonly<Record<string, string>>, modelId: string): Promise<void> {
    const loggedParams = new Set(run.data?.params?.map((p) => p.key));
    const loggedMetrics = new Set(run.data?.metrics?.map((m) => m.key));
    let params = Object.entries(allParams)
      .filter(([key]) => !loggedParams.has(key))
      .map(([key, value]) => ({ key, value }));
    const timestamp = Date.now();
    let metrics = Object.entries(allMetrics)
      .filter(([key, value]) => !loggedMetrics.has(key) && Number.isFinite(value))
      .map(([key, value]) => ({ key, value, timestamp, step: 0, model_id: modelId }));
    let tags = Object.entries(allTags).map(([key, value]) => ({ key, value }));
    while (params.length + metrics.length + tags.length > 0) {
      const batch = { params: params.slice(0, BATCH.params), tags: tags.slice(0, BATCH.tags), metrics: [] as typeof metrics };
      batch.metrics = metrics.slice(0, BATCH.total - batch.params.length - batch.tags.length);
      await this.client.post('runs/log-batch', { run_id: run.info.run_id, ...batch });
      params = params.slice(batch.params.length);
      metrics = metrics.slice(batch.metrics.length);
      tags = tags.slice(batch.tags.length);
    }
  }

  /**
   * The LoggedModel's artifacts: the model directory, the weights' file and model.onnx first and
   * MLmodel last. The weights stay in their own file beside model.onnx, under the name the model
   * refers to them by, as `mlflow.onnx.log_model` saves a model by default (save_as_external_data):
   * `mlflow.onnx.load_model` and the pyfunc's onnxruntime session read them from there.
   */
  private async uploadModel(model: LoggedModelInfo, sourceRunId: string, request: RegistrationRequest): Promise<void> {
    const root = artifactRoot(model.artifact_uri);
    let dataBytes = 0;
    if (request.externalDataPath) {
      dataBytes = (await stat(request.externalDataPath)).size;
      await this.client.uploadArtifact(`${root}/${basename(request.externalDataPath)}`, { file: request.externalDataPath, size: dataBytes });
    }
    const { size } = await stat(request.modelPath);
    await this.client.uploadArtifact(`${root}/${ONNX_FILE}`, { file: request.modelPath, size });
    const files = modelDirectoryFiles({
      modelId: model.model_id,
      artifactLocation: model.artifact_uri,
      runId: sourceRunId,
      onnxBytes: size + dataBytes,
      createdAt: new Date(),
      metadata: { sha256: request.sha256, pipeline_run_id: request.pipelineRunId, onnx_uri: request.modelUri },
    });
    for (const [name, content] of Object.entries(files)) await this.client.uploadArtifact(`${root}/${name}`, Buffer.from(content));
  }

  private async ensureRegisteredModel(name: string): Promise<void> {
    await this.client.post('registered-models/create', { name, description: 'LocalizationNet ONNX models registered by Heimdall' }).catch((error: unknown) => {
      if (!isMlflowError(error, 'RESOURCE_ALREADY_EXISTS')) throw error;
    });
  }

  /** Creates the version from the LoggedModel and waits until MLflow has it READY. */
  private async createVersion(model: LoggedModelInfo, sourceRunId: string, pipelineRunId: string, request: RegistrationRequest): Promise<MlflowModelVersion> {
    let { model_version: version } = await this.client.post<{ model_version: MlflowModelVersion }>('model-versions/create', {
      name: request.name,
      source: `models:/${model.model_id}`,
      model_id: model.model_id,
      run_id: sourceRunId,
      description: `Heimdall pipeline run ${request.pipelineRunId}`,
      tags: Object.entries({ ...request.tags, [SHA256_TAG]: request.sha256, [PIPELINE_RUN_TAG]: request.pipelineRunId, [VERSION_RUN_TAG]: pipelineRunId }).map(([key, value]) => ({ key, value })),
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

/** The OS user, as MLflow's Python client records it (mlflow/tracking/context/default_context.py). */
function osUser(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}

/** The context tags MLflow's Python client puts on runs and LoggedModels. */
function contextTags(user: string): Tag[] {
  return [
    { key: 'mlflow.user', value: user },
    { key: 'mlflow.source.name', value: 'heimdall' },
    { key: 'mlflow.source.type', value: 'JOB' },
  ];
}

function holderOf(model: MlflowRegisteredModel | undefined, alias: string): string | undefined {
  return model?.aliases?.find((a) => a.alias === alias)?.version;
}

function historyOf(model: MlflowRegisteredModel | undefined, alias: string): AliasChange[] {
  const raw = model?.tags?.find((t) => t.key === `${ALIAS_HISTORY_TAG_PREFIX}${alias}`)?.value;
  if (!raw) return [];
  try {
    const parsed: unknown = JSON.parse(raw);
    return Array.isArray(parsed) ? (parsed as AliasChange[]) : [];
  } catch {
    // someone edited the tag by hand: the history starts again rather than failing every move
    return [];
  }
}

/**
 * The path of an artifact folder in the proxied artifact store: `mlflow-artifacts:/<exp>/<run>/artifacts`
 * -> `<exp>/<run>/artifacts` (mlflow/store/artifact/mlflow_artifacts_repo.py resolves the same uri
 * against the tracking server); LoggedModels' `mlflow-artifacts:/<exp>/models/<m-…>/artifacts` alike.
 */
function artifactRoot(artifactUri: string): string {
  const match = /^mlflow-artifacts:\/([^/].*)$/.exec(artifactUri);
  if (!match) {
    throw new HeimdallError(
      ErrorCodes.REGISTRY_REJECTED,
      `the artifact location ${artifactUri} is not served by the tracking server: start MLflow with --serve-artifacts (the default) and no --default-artifact-root outside mlflow-artifacts:/`,
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
    created: new Date(Number(version.creation_timestamp ?? 0)).toISOString(),
  };
}
