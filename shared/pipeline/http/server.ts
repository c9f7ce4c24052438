import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, type ServerType } from '@hono/node-server';
import type { Hono } from 'hono';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';
import { loadConfig } from '../../config/index.ts';
import { ErrorCodes, HeimdallError } from '../../errors/index.ts';
import { createLogger } from '../../logging/index.ts';
import { createAdapters } from '../adapters.ts';
import type { StageEnvironment } from '../execute.ts';
import type { AnyStage } from '../stage.ts';
import type { SubscriberFunction } from '../subscriber.ts';
import { createSubscriberApp } from './subscriber-app.ts';
import { createFunctionApp } from './app.ts';
import { FunctionLifecycle } from './lifecycle.ts';

export interface ServeOptions {
  /** Configuration and `PORT` (Knative sets it; default 8080, 0 for any free port); process.env by default. */
  readonly env?: NodeJS.ProcessEnv;
  /** Signals that drain and stop the function. */
  readonly signals?: readonly NodeJS.Signals[];
}

export interface RunningFunction {
  readonly port: number;
  readonly lifecycle: FunctionLifecycle;
  /** Drains (readiness 503, in-flight events finish), closes the listener, removes the scratch dir. */
  stop(): Promise<void>;
  /** Settles once stopped, by stop() or a signal. */
  readonly stopped: Promise<void>;
}

const Port = z.preprocess((v) => (v === '' ? undefined : v), z.coerce.number().int().min(0).max(65535).default(8080));

/**
 * Serves one stage over HTTP, the lifecycle a Knative pod expects: listening (liveness answers,
 * readiness 503) -> ready once onnxruntime and the adapters are up -> on SIGTERM/SIGINT draining
 * (Knative gives the pod its revision timeout as termination grace period) -> stopped.
 */
export function serveFunction(stage: AnyStage, options: ServeOptions = {}): Promise<RunningFunction> {
  return serveApp(stage.name, (environment, lifecycle) => ({ app: createFunctionApp(stage, environment, lifecycle) }), options);
}

/**
 * A subscriber (alerts) as a Knative function: it takes any Heimdall event (it is also the
 * pipeline's dead-letter sink) and answers 202 at once; USAGE when it is not configured.
 */
export function serveSubscriber(subscriber: SubscriberFunction, options: ServeOptions = {}): Promise<RunningFunction> {
  return serveApp(
    subscriber.name,
    (environment, lifecycle) => {
      const running = subscriber.create(environment.config, environment.logger);
      if (!running) throw new HeimdallError(ErrorCodes.USAGE, `function ${subscriber.name} is not configured (see README: Status page and alerts)`);
      return { app: createSubscriberApp(subscriber.name, running, environment.logger, lifecycle), close: () => running.close(SUBSCRIBER_DRAIN_MS) };
    },
    options,
  );
}

/** How long a stopping subscriber function waits for deliveries in flight (alerts being retried). */
const SUBSCRIBER_DRAIN_MS = 10_000;

type AppBuilder = (environment: StageEnvironment, lifecycle: FunctionLifecycle) => { app: Hono; close?: () => Promise<void> };

async function serveApp(name: string, build: AppBuilder, options: ServeOptions): Promise<RunningFunction> {
  const env = options.env ?? process.env;
  const port = Port.safeParse(env.PORT);
  if (!port.success) throw new HeimdallError(ErrorCodes.USAGE, `invalid configuration: PORT: ${port.error.issues[0]!.message}`);
  const config = loadConfig(env);
  const logger = createLogger(config.logLevel, `heimdall-${name}`);
  const scratchDir = await mkdtemp(join(tmpdir(), `heimdall-${name}-`));
  const lifecycle = new FunctionLifecycle();
  const removeScratch = () => rm(scratchDir, { recursive: true, force: true });
  let built: ReturnType<AppBuilder>;
  let server: Awaited<ReturnType<typeof listen>>;
  try {
    built = build({ ...(await createAdapters(config)), config, logger, scratchDir }, lifecycle);
    server = await listen(built.app, port.data);
  } catch (error) {
    await removeScratch();
    throw error;
  }

  let stopping: Promise<void> | undefined;
  let stopRequested!: () => void;
  const stopped = new Promise<void>((resolve) => (stopRequested = resolve)).then(() => stopping!);
  const stop = () => {
    stopping ??= (async () => {
      for (const signal of options.signals ?? []) process.off(signal, onSignal);
      await lifecycle.drain();
      await close(server.server);
      await built.close?.();
      await removeScratch();
      logger.info('stopped');
    })();
    stopRequested();
    return stopping;
  };
  const onSignal = (signal: NodeJS.Signals) => {
    logger.info({ signal, inFlight: lifecycle.inFlight }, 'draining');
    void stop();
  };
  for (const signal of options.signals ?? []) process.once(signal, onSignal);

  try {
    assertRuntimeLoaded();
  } catch (error) {
    await stop();
    throw error;
  }
  lifecycle.ready();
  logger.info({ port: server.port }, 'ready');
  return { port: server.port, lifecycle, stop, stopped };
}

/** The onnxruntime native binding is loaded (importing it loads it) and offers the CPU backend every model can fall back to. */
function assertRuntimeLoaded(): void {
  if (!ort.listSupportedBackends().some((backend) => backend.name === 'cpu')) {
    throw new HeimdallError(ErrorCodes.IO_ERROR, 'onnxruntime-node offers no CPU backend: its native binding is incomplete');
  }
}

function listen(app: Hono, port: number): Promise<{ server: ServerType; port: number }> {
  return new Promise((resolve, reject) => {
    const server = serve({ fetch: app.fetch, port }, (info) => resolve({ server, port: info.port }));
    server.once('error', reject);
  });
}

function close(server: ServerType): Promise<void> {
  return new Promise((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
}
