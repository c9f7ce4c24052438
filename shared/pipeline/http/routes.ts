import type { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { Registry } from 'prom-client';
import type { FunctionLifecycle } from './lifecycle.ts';

/** Events are small JSON documents (megabytes are weights, and travel through the object store). */
export const MAX_EVENT_BYTES = 1 << 20;

/**
 * What every Heimdall function serves besides its events: liveness and readiness for the kubelet,
 * `/metrics` for Prometheus, and the guards of the event endpoint (size cap; 503 while starting or
 * draining, which makes the Broker deliver again, to a pod that is ready).
 */
export function operationalRoutes(app: Hono, lifecycle: FunctionLifecycle, registry: Registry): void {
  app.get('/health/liveness', (c) => c.json({ status: lifecycle.state }));
  app.get('/health/readiness', (c) => c.json({ status: lifecycle.state }, lifecycle.state === 'ready' ? 200 : 503));
  app.get('/metrics', async (c) => c.body(await registry.metrics(), 200, { 'content-type': registry.contentType }));
  app.post('/', bodyLimit({ maxSize: MAX_EVENT_BYTES, onError: (c) => c.json({ error: { code: 'INVALID_EVENT', message: `event larger than ${MAX_EVENT_BYTES} bytes` } }, 413) }));
  app.post('/', async (c, next) => (lifecycle.state === 'ready' ? next() : c.json({ status: lifecycle.state }, 503)));
}

/** Knative's sink contract: any other method on the event endpoint is 405. Registered last. */
export function onlyPost(app: Hono): void {
  app.all('/', (c) => c.body(null, 405, { allow: 'POST' }));
}
