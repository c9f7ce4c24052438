/**
 * A small client of MLflow's REST API (https://mlflow.org/docs/latest/rest-api.html): JSON calls
 * under `/api/2.0/mlflow/` and artifact uploads to the proxied artifact store
 * (`PUT /api/2.0/mlflow-artifacts/artifacts/<path>`, mlflow/protos/mlflow_artifacts.proto).
 * Authentication and retries follow MLflow's own Python client (mlflow/utils/rest_utils.py,
 * mlflow/utils/request_utils.py): basic auth when a username and password are set, else a bearer
 * token; retries with backoff on 408, 429, 500, 502, 503, 504 and broken connections.
 */
import { createReadStream } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { ErrorCodes, HeimdallError, type ErrorCode } from '../../errors/index.ts';
import { DEFAULT_RETRY, isNetworkError, withRetry, type RetryPolicy } from '../../errors/retry.ts';

export interface MlflowConnection {
  readonly trackingUri: string;
  readonly token?: string;
  readonly username?: string;
  readonly password?: string;
  readonly retry?: RetryPolicy;
}

/** A file to upload, streamed from disk. */
export interface FileBody {
  readonly file: string;
  readonly size: number;
}

/** An answer from MLflow that is not a success, with MLflow's `error_code` when it sent one. */
export class MlflowError extends HeimdallError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly status: number,
    readonly mlflowCode: string | undefined,
  ) {
    super(code, message);
  }
}

export function isMlflowError(error: unknown, mlflowCode: string): error is MlflowError {
  return error instanceof MlflowError && error.mlflowCode === mlflowCode;
}

const TRANSIENT_STATUS = new Set([408, 429, 500, 502, 503, 504]);
const AUTH_CODES = new Set(['PERMISSION_DENIED', 'UNAUTHENTICATED']);
/** Each request may take this long without a byte moving before it counts as a broken connection. */
const IDLE_TIMEOUT_MS = 120_000;

interface Answer {
  readonly status: number;
  readonly text: string;
}

class TransientAnswer extends Error {
  constructor(readonly answer: Answer) {
    super(`HTTP ${answer.status}`);
  }
}

export class MlflowClient {
  private readonly base: URL;
  private readonly authorization: string | undefined;
  private readonly retry: RetryPolicy;

  constructor(connection: MlflowConnection) {
    this.base = new URL(connection.trackingUri.replace(/\/*$/, '/'));
    this.authorization =
      connection.username && connection.password
        ? `Basic ${Buffer.from(`${connection.username}:${connection.password}`).toString('base64')}`
        : connection.token
          ? `Bearer ${connection.token}`
          : undefined;
    this.retry = connection.retry ?? DEFAULT_RETRY;
  }

  get<T>(endpoint: string, query: Record<string, string>): Promise<T> {
    return this.json('GET', `api/2.0/mlflow/${endpoint}?${new URLSearchParams(query)}`);
  }

  post<T>(endpoint: string, body: unknown): Promise<T> {
    return this.json('POST', `api/2.0/mlflow/${endpoint}`, body);
  }

  patch<T>(endpoint: string, body: unknown): Promise<T> {
    return this.json('PATCH', `api/2.0/mlflow/${endpoint}`, body);
  }

  delete<T>(endpoint: string, body: unknown): Promise<T> {
    return this.json('DELETE', `api/2.0/mlflow/${endpoint}`, body);
  }

  /** Uploads to the proxied artifact store; `path` is relative to its root (`<experiment>/<run>/artifacts/...`). */
  async uploadArtifact(path: string, content: Buffer | FileBody): Promise<void> {
    const encoded = path.split('/').map(encodeURIComponent).join('/');
    await this.call('PUT', `api/2.0/mlflow-artifacts/artifacts/${encoded}`, content, 'application/octet-stream', `upload of artifact ${path}`);
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const what = `${method} ${path.split('?')[0]}`;
    const text = await this.call(method, path, body === undefined ? undefined : Buffer.from(JSON.stringify(body)), 'application/json', what);
    try {
      return (text ? JSON.parse(text) : {}) as T;
    } catch {
      throw new HeimdallError(ErrorCodes.REGISTRY_ERROR, `MLflow at ${this.base.origin} answered ${what} with something other than JSON`);
    }
  }

  /** One request with retries; the body of a 2xx answer, else an MlflowError with our code. */
  private async call(method: string, path: string, body: Buffer | FileBody | undefined, contentType: string, what: string): Promise<string> {
    let answer: Answer;
    try {
      answer = await withRetry(
        async () => {
          const result = await this.send(method, new URL(path, this.base), body, contentType);
          if (TRANSIENT_STATUS.has(result.status)) throw new TransientAnswer(result);
          return result;
        },
        (error) => error instanceof TransientAnswer || isNetworkError(error),
        this.retry,
      );
    } catch (error) {
      if (error instanceof TransientAnswer) answer = error.answer;
      else throw new HeimdallError(ErrorCodes.REGISTRY_ERROR, `cannot reach MLflow at ${this.base.origin} for ${what}: ${(error as Error).message}`, { cause: error });
    }
    if (answer.status >= 200 && answer.status < 300) return answer.text;
    throw this.failure(answer, what);
  }

  private failure({ status, text }: Answer, what: string): MlflowError {
    let parsed: { error_code?: string; message?: string } = {};
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      // not MLflow's JSON (a proxy's page, a 401 text): the status says enough
    }
    const detail = parsed.error_code ? `${parsed.error_code}: ${parsed.message ?? ''}` : `HTTP ${status}`;
    const origin = this.base.origin;
    if (status === 401 || status === 403 || AUTH_CODES.has(parsed.error_code ?? '')) {
      return new MlflowError(ErrorCodes.REGISTRY_AUTH, `MLflow at ${origin} refused ${what} (HTTP ${status}): check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN`, status, parsed.error_code);
    }
    if (TRANSIENT_STATUS.has(status)) {
      return new MlflowError(ErrorCodes.REGISTRY_ERROR, `MLflow at ${origin} kept failing ${what} after ${this.retry.attempts} attempts: ${detail}`, status, parsed.error_code);
    }
    return new MlflowError(ErrorCodes.REGISTRY_REJECTED, `MLflow at ${origin} rejected ${what}: ${detail}`, status, parsed.error_code);
  }

  private send(method: string, url: URL, body: Buffer | FileBody | undefined, contentType: string): Promise<Answer> {
    const headers: Record<string, string | number> = {};
    if (this.authorization) headers['authorization'] = this.authorization;
    if (body) {
      headers['content-type'] = contentType;
      headers['content-length'] = Buffer.isBuffer(body) ? body.length : body.size;
    }
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const outgoing = request(url, { method, headers, timeout: IDLE_TIMEOUT_MS }, (response: IncomingMessage) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        response.on('error', reject);
      });
      outgoing.on('timeout', () => outgoing.destroy(Object.assign(new Error(`no answer in ${IDLE_TIMEOUT_MS / 1000} s`), { code: 'ETIMEDOUT' })));
      outgoing.on('error', reject);
      if (body === undefined || Buffer.isBuffer(body)) outgoing.end(body);
      else createReadStream(body.file).on('error', (error) => outgoing.destroy(error)).pipe(outgoing);
    });
  }
}
