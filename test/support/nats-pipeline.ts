import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { NatsEventBus } from '../../shared/bus/nats/event-bus.ts';
import { MINIO_SUBJECT } from '../../shared/bus/nats/subjects.ts';
import type { AnyCloudEvent, CloudEvent, EventType } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import type { ObjectInfo } from '../../shared/storage/object-store.ts';

const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');

/** The shortest benchmark (a 1 ms budget: the fewest timed runs that give a p50 interval): these tests check behaviour; the benchmarks measure. */
export const QUICK_ENV = { HEIMDALL_BENCHMARK_BUDGET_MS: '1', HEIMDALL_BENCHMARK_MIN_RUNS: '3', HEIMDALL_BENCHMARK_WARMUP: '1', HEIMDALL_BENCHMARK_BATCHES: '1,8', HEIMDALL_PARITY_SAMPLES: '2' };

/** A `heimdall serve` child process, as an operator starts one. */
export interface WorkerProcess {
  readonly child: ChildProcess;
  readonly stdout: string[];
  stderr(): string;
  /** Resolves with the exit code (or signal name). */
  readonly exited: Promise<number | string>;
}

export function startServe(env: Record<string, string>, args: readonly string[] = []): WorkerProcess {
  return startHeimdall(env, ['serve', ...args]);
}

/** `heimdall watch` as a person runs it; stop it with SIGINT. */
export function startWatch(args: readonly string[], env: Record<string, string>): WorkerProcess {
  return startHeimdall(env, ['watch', ...args]);
}

function startHeimdall(env: Record<string, string>, argv: readonly string[]): WorkerProcess {
  const child = spawn(process.execPath, [heimdall, ...argv], {
    env: { ...process.env, ...QUICK_ENV, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stdout: string[] = [];
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => stdout.push(...chunk.toString().split('\n').filter(Boolean)));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return { child, stdout, stderr: () => stderr, exited };
}

/** Stops a worker the way Kubernetes does (SIGTERM) and waits for it. */
export async function stopServe(worker: WorkerProcess): Promise<number | string> {
  if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill('SIGTERM');
  return worker.exited;
}

/** What MinIO publishes for an upload (DESIGN §3), keys URL-query-escaped. */
export function minioNotification(bucket: string, key: string, object: Pick<ObjectInfo, 'size' | 'etag'>, eventName = 's3:ObjectCreated:Put') {
  // MinIO escapes keys as Go's url.QueryEscape does: '/' as %2F, space as '+'.
  const escaped = encodeURIComponent(key).replace(/%20/g, '+');
  return JSON.stringify({
    EventName: eventName,
    Key: `${bucket}/${escaped}`,
    Records: [{ eventVersion: '2.0', eventSource: 'minio:s3', eventName, s3: { s3SchemaVersion: '1.0', bucket: { name: bucket, arn: `arn:aws:s3:::${bucket}` }, object: { key: escaped, size: object.size, eTag: object.etag, contentType: 'application/octet-stream' } } }],
  });
}

/** A test's view of the pipeline on NATS: publish notifications, collect every event from the stream. */
export class PipelineObserver {
  readonly events: AnyCloudEvent[] = [];
  private constructor(
    readonly nc: NatsConnection,
    private readonly bus: NatsEventBus,
  ) {}

  static async connect(url: string): Promise<PipelineObserver> {
    // NATS_URL's form: one server, or a cluster's, separated by commas.
    const nc = await connect({ servers: url.split(','), maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    const observer = new PipelineObserver(nc, new NatsEventBus(nc, createLogger('silent')));
    return observer;
  }

  /** Starts collecting (from the stream's start); call after a worker has provisioned the streams. */
  follow(): void {
    this.bus.subscribe('*', async (event) => void this.events.push(event), { fromStart: true });
  }

  async notify(body: string): Promise<void> {
    await jetstream(this.nc).publish(MINIO_SUBJECT, body);
  }

  of<T extends EventType>(type: T, runId?: string): CloudEvent<T>[] {
    return this.events.filter((e): e is CloudEvent<T> & AnyCloudEvent => e.type === type && (!runId || e.data.runId === runId));
  }

  /** A durable consumer has nothing left to deliver and nothing unacknowledged (the work is over, not just slow). */
  async idle(stream: string, durable: string): Promise<boolean> {
    const info = await (await jetstreamManager(this.nc)).consumers.info(stream, durable);
    return info.num_pending === 0 && info.num_ack_pending === 0;
  }

  async close(): Promise<void> {
    await this.bus.close();
    await this.nc.close();
  }
}

export async function waitFor<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Versions in the embedded registry (the adapter the NATS workers use without MLflow configured). */
export async function registryVersions(dataDir: string): Promise<Array<{ version: string; tags: Record<string, string> }>> {
  const registry = JSON.parse(await readFile(join(dataDir, 'registry/registry.json'), 'utf8').catch(() => '{"models":{}}'));
  return registry.models['heimdall-localization']?.versions ?? [];
}
