/**
 * knative.yaml without a cluster (DESIGN §7: fakes only for what cannot run here): every document
 * validated against the CRD schema of its kind (infra/knative/schemas, copied from upstream), then
 * the properties that make the deployment work: routing, GPU placement, timeouts that agree, one
 * image and one configuration, probes on endpoints the functions really serve. And the Dockerfile's
 * shape.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv, type ValidateFunction } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { stageFunctions } from '../../functions/index.ts';
import { loadConfig } from '../../shared/config/index.ts';
import { EVENT_TYPES } from '../../shared/events/index.ts';
import { createLogger } from '../../shared/logging/index.ts';
import { createAdapters } from '../../shared/pipeline/adapters.ts';
import { createFunctionApp } from '../../shared/pipeline/http/app.ts';

const root = join(import.meta.dirname, '../..');

// Manifests are untyped YAML, read as such.
type Manifest = Record<string, any>;

const documents: Manifest[] = parseAllDocuments(readFileSync(join(root, 'knative.yaml'), 'utf8')).map((document) => {
  if (document.errors.length > 0) throw document.errors[0];
  return document.toJS() as Manifest;
});
const ofKind = (apiVersion: string, kind: string) => documents.filter((d) => d.apiVersion === apiVersion && d.kind === kind);
const services = ofKind('serving.knative.dev/v1', 'Service');
const triggers = ofKind('eventing.knative.dev/v1', 'Trigger');
const service = (name: string) => services.find((s) => s.metadata.name === name);
const containerOf = (svc: Manifest): Manifest => svc.spec.template.spec.containers[0];
const configMap = (namespace: string, name: string) => ofKind('v1', 'ConfigMap').find((c) => c.metadata.namespace === namespace && c.metadata.name === name)!.data as Record<string, string>;

/** ISO 8601 durations as Knative writes them (PT11M, PT30S). */
function seconds(duration: string): number {
  const match = /^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?$/.exec(duration);
  if (!match) throw new Error(`not an ISO 8601 duration: ${duration}`);
  return Number(match[1] ?? 0) * 3600 + Number(match[2] ?? 0) * 60 + Number(match[3] ?? 0);
}

/**
 * A CRD's openAPIV3Schema as JSON Schema, with the API server's reading of the Kubernetes
 * extensions: an object that lists its properties, declares no additionalProperties and does not
 * preserve unknown fields rejects unknown fields (strict field validation, kubectl's default: a typo
 * such as `timeoutSecond` fails instead of being silently pruned); int-or-string takes either;
 * list and map types only say how to merge, so they are dropped.
 */
function structural(schema: Manifest): Manifest {
  const out: Manifest = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key.startsWith('x-kubernetes-')) continue;
    if (key === 'properties') out[key] = Object.fromEntries(Object.entries(value as Manifest).map(([name, property]) => [name, structural(property)]));
    else if (key === 'items' || (key === 'additionalProperties' && typeof value === 'object')) out[key] = structural(value);
    else if (key === 'anyOf') out[key] = (value as Manifest[]).map(structural);
    else out[key] = value;
  }
  if (schema['x-kubernetes-int-or-string'] && !schema.anyOf) out.anyOf = [{ type: 'integer' }, { type: 'string' }];
  if (schema.properties && schema.additionalProperties === undefined && !schema['x-kubernetes-preserve-unknown-fields']) out.additionalProperties = false;
  return out;
}

/** `<group>/<version>/<Kind>` -> validator, for every CRD in infra/knative/schemas. */
const validators = new Map<string, ValidateFunction>();
{
  const ajv = new Ajv({
    allErrors: true,
    formats: {
      int32: { type: 'number', validate: (n: number) => Number.isInteger(n) && Math.abs(n) < 2 ** 31 },
      int64: { type: 'number', validate: (n: number) => Number.isSafeInteger(n) },
    },
  });
  const dir = join(root, 'infra/knative/schemas');
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml'))) {
    const crd = parse(readFileSync(join(dir, file), 'utf8')) as Manifest;
    for (const version of crd.spec.versions) {
      const schema = structural(version.schema.openAPIV3Schema);
      // Every object may carry apiVersion, kind and metadata, listed in its schema or not.
      schema.properties = { apiVersion: { type: 'string' }, kind: { type: 'string' }, metadata: { type: 'object' }, ...schema.properties };
      validators.set(`${crd.spec.group}/${version.name}/${crd.spec.names.kind}`, ajv.compile(schema));
    }
  }
}
const validatorOf = (document: Manifest) => validators.get(`${document.apiVersion}/${document.kind}`);
const errorsOf = (document: Manifest) => {
  const validate = validatorOf(document)!;
  return validate(document) ? [] : validate.errors!.map((e) => `${e.instancePath} ${e.message}${e.params && 'additionalProperty' in e.params ? `: ${e.params.additionalProperty}` : ''}`);
};

/** What the pipeline needs routed (DESIGN §1, issue 6): event type -> the Services that consume it. */
const ROUTES: Record<string, string[]> = {
  'heimdall.checkpoint.created': ['heimdall-export'],
  'heimdall.model.exported': ['heimdall-validate'],
  'heimdall.model.validated': ['heimdall-parity'],
  'heimdall.model.parity-checked': ['heimdall-benchmark'],
  'heimdall.model.benchmarked': ['heimdall-register'],
  'heimdall.model.registered': ['heimdall-alerts'],
  'heimdall.pipeline.failed': ['heimdall-alerts'],
};
const GPU_STAGES = ['parity', 'benchmark'];
/** The keys of the Secret `heimdall-credentials` (README: kubectl create secret), with stand-in values. */
const CREDENTIALS = { S3_ACCESS_KEY: 'access-key', S3_SECRET_KEY: 'secret-key', MLFLOW_TRACKING_TOKEN: 'token' };
/** What every container's environment holds: the ConfigMap, the Secret, then its own env. */
const environmentOf = (container: Manifest) => ({
  ...configMap('heimdall', 'heimdall-config'),
  ...CREDENTIALS,
  ...Object.fromEntries((container.env ?? []).map((e: Manifest) => [e.name, e.value])),
});

describe('knative.yaml against the Knative CRD schemas', () => {
  it('validates every Service, Broker, Trigger and SinkBinding; every other document is a core kind', () => {
    const core = new Set(['v1/Namespace', 'v1/ConfigMap', 'apps/v1/Deployment']);
    for (const document of documents) {
      const what = `${document.kind} ${document.metadata?.name}`;
      if (validatorOf(document)) expect({ what, errors: errorsOf(document) }).toEqual({ what, errors: [] });
      else expect(core, `no schema for ${document.apiVersion}/${what}`).toContain(`${document.apiVersion}/${document.kind}`);
    }
    expect(new Set(documents.filter((d) => validatorOf(d)).map((d) => d.kind))).toEqual(new Set(['Service', 'Broker', 'Trigger', 'SinkBinding']));
  });

  it('fails a broken document, naming the fault', () => {
    const broken = structuredClone(service('heimdall-export')!);
    broken.spec.template.spec.timeoutSecond = 600;
    broken.spec.template.spec.containerConcurrency = 'one';
    delete broken.spec.template.spec.containers;
    expect(errorsOf(broken)).toEqual(
      expect.arrayContaining([
        '/spec/template/spec must NOT have additional properties: timeoutSecond',
        '/spec/template/spec/containerConcurrency must be integer',
        "/spec/template/spec must have required property 'containers'",
      ]),
    );
    const trigger = structuredClone(triggers[0]!);
    trigger.spec.subscriber.ref = { kind: 'Service', nmae: 'heimdall-export' };
    trigger.spec.delivery.retry = 'three';
    expect(errorsOf(trigger)).toEqual(expect.arrayContaining(['/spec/subscriber/ref must NOT have additional properties: nmae', '/spec/delivery/retry must be integer']));
  });
});

describe('knative.yaml routing', () => {
  it('routes every event type through the NatsJetStreamBroker to the Services that consume it', () => {
    const [broker, ...others] = ofKind('eventing.knative.dev/v1', 'Broker');
    expect(others).toEqual([]);
    expect(broker!.metadata.annotations['eventing.knative.dev/broker.class']).toBe('NatsJetStreamBroker');

    const routes: Record<string, string[]> = {};
    for (const trigger of triggers) {
      expect(trigger.spec.broker).toBe(broker!.metadata.name);
      expect(trigger.spec.subscriber.ref).toMatchObject({ apiVersion: 'serving.knative.dev/v1', kind: 'Service' });
      (routes[trigger.spec.filter.attributes.type] ??= []).push(trigger.spec.subscriber.ref.name);
    }
    for (const consumers of Object.values(routes)) consumers.sort();
    expect(routes).toEqual(ROUTES);
    // model.promoted is for deployers outside the project: nothing of ours consumes it.
    expect(Object.keys(routes).sort()).toEqual(EVENT_TYPES.filter((t) => t !== 'heimdall.model.promoted').sort());
  });

  it('sends each event to a Service in the file that runs the stage consuming its type', () => {
    for (const trigger of triggers) {
      const subscriber = service(trigger.spec.subscriber.ref.name);
      expect(subscriber, trigger.metadata.name).toBeDefined();
      const [name] = containerOf(subscriber!).args;
      const stage = stageFunctions.find((s) => s.name === name);
      if (stage) expect({ trigger: trigger.metadata.name, consumes: stage.input }).toEqual({ trigger: trigger.metadata.name, consumes: trigger.spec.filter.attributes.type });
    }
    for (const stage of stageFunctions) expect(containerOf(service(`heimdall-${stage.name}`)!).args).toEqual([stage.name]);
  });

  it('retries and then dead-letters every pipeline delivery to a Service in the file', () => {
    for (const trigger of triggers) {
      const { delivery } = trigger.spec;
      expect(delivery).toMatchObject({ retry: expect.any(Number), backoffPolicy: 'exponential', backoffDelay: expect.stringMatching(/^PT/) });
      if (trigger.spec.subscriber.ref.name === 'heimdall-alerts') continue;
      expect(delivery.deadLetterSink.ref).toMatchObject({ apiVersion: 'serving.knative.dev/v1', kind: 'Service' });
      expect(service(delivery.deadLetterSink.ref.name), trigger.metadata.name).toBeDefined();
      // The alerts function's dead-letter endpoint, which files the stage's failure.
      expect(delivery.deadLetterSink).toMatchObject({ ref: { name: 'heimdall-alerts' }, uri: '/dead-letter' });
    }
  });

  it('feeds the Broker from the ingest adapter through a SinkBinding', () => {
    const [ingest] = ofKind('apps/v1', 'Deployment');
    const binding = ofKind('sources.knative.dev/v1', 'SinkBinding').find((b) => b.spec.subject.kind === 'Deployment');
    expect(binding!.spec.subject).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: ingest!.metadata.name });
    expect(binding!.spec.sink.ref).toEqual({ apiVersion: 'eventing.knative.dev/v1', kind: 'Broker', name: 'heimdall' });
    const container = ingest!.spec.template.spec.containers[0];
    expect([...container.command, ...container.args]).toEqual(['node', 'bin/heimdall.js', 'serve', '--stages', 'ingest']);
    // Its drain (up to its ack wait) fits in the pod's grace period.
    const ackWait = Number(container.env.find((e: { name: string }) => e.name === 'HEIMDALL_ACK_WAIT_SECONDS').value);
    expect(ackWait).toBeLessThan(ingest!.spec.template.spec.terminationGracePeriodSeconds);
  });
  it("lets the register function post the model.promoted that follows its reply to the Broker (K_SINK)", () => {
    const binding = ofKind('sources.knative.dev/v1', 'SinkBinding').find((b) => b.spec.subject.kind === 'Service');
    expect(binding!.spec.subject).toEqual({ apiVersion: 'serving.knative.dev/v1', kind: 'Service', name: 'heimdall-register' });
    expect(binding!.spec.sink.ref).toEqual({ apiVersion: 'eventing.knative.dev/v1', kind: 'Broker', name: 'heimdall' });
  });
});

describe('knative.yaml pods', () => {
  it('runs parity and benchmark on one GPU each, one request at a time, on GPU nodes, with CUDA', () => {
    for (const svc of services) {
      const spec = svc.spec.template.spec;
      const container = containerOf(svc);
      const gpu = GPU_STAGES.includes(container.args[0]);
      const facts = {
        gpus: container.resources.limits['nvidia.com/gpu'],
        containerConcurrency: spec.containerConcurrency,
        target: svc.spec.template.metadata.annotations['autoscaling.knative.dev/target'],
        nodeSelector: spec.nodeSelector,
        toleratesGpuTaint: (spec.tolerations ?? []).some((t: Manifest) => t.key === 'nvidia.com/gpu' && t.operator === 'Exists'),
        provider: loadConfig(environmentOf(container)).benchmark.provider,
        cudaImage: container.image.endsWith('-cuda'),
      };
      if (gpu) {
        expect({ name: svc.metadata.name, ...facts }).toEqual({
          name: svc.metadata.name,
          gpus: 1,
          containerConcurrency: 1,
          target: '1',
          nodeSelector: { 'nvidia.com/gpu.present': 'true' },
          toleratesGpuTaint: true,
          provider: 'cuda',
          cudaImage: true,
        });
      } else {
        expect({ name: svc.metadata.name, gpus: facts.gpus, nodeSelector: facts.nodeSelector, provider: facts.provider, cudaImage: facts.cudaImage }).toEqual({
          name: svc.metadata.name,
          gpus: undefined,
          nodeSelector: undefined,
          provider: 'cpu',
          cudaImage: false,
        });
      }
    }
  });

  it('sets the timeouts so that they agree: serving <= max revision, serving + cold start <= delivery <= ack wait', () => {
    const maxRevision = Number(configMap('knative-serving', 'config-defaults')['max-revision-timeout-seconds']);
    const { nats } = loadConfig({ ...configMap('heimdall', 'heimdall-config'), ...CREDENTIALS });
    for (const svc of services) {
      const { timeoutSeconds, responseStartTimeoutSeconds, idleTimeoutSeconds } = svc.spec.template.spec;
      // The function writes nothing until it is done: the whole step must fit every one of them.
      expect({ name: svc.metadata.name, responseStartTimeoutSeconds, idleTimeoutSeconds }).toEqual({ name: svc.metadata.name, responseStartTimeoutSeconds: timeoutSeconds, idleTimeoutSeconds: timeoutSeconds });
      expect(timeoutSeconds).toBeLessThanOrEqual(maxRevision);
    }
    for (const trigger of triggers) {
      const serving = service(trigger.spec.subscriber.ref.name)!.spec.template.spec.timeoutSeconds as number;
      const delivery = seconds(trigger.spec.delivery.timeout);
      // A minute for a cold start, so Serving's own timeout (504, retried) always comes first.
      expect(delivery, trigger.metadata.name).toBeGreaterThanOrEqual(serving + 60);
      expect(delivery, trigger.metadata.name).toBeLessThanOrEqual(nats!.ackWaitSeconds);
      expect(nats!.maxDeliver, trigger.metadata.name).toBe(trigger.spec.delivery.retry + 1);
    }
    // The ack wait is no longer than it must be: a crashed consumer's message waits that long.
    expect(nats!.ackWaitSeconds).toBe(Math.max(...triggers.map((t) => seconds(t.spec.delivery.timeout))));
  });

  it('scales the pipeline functions to zero, each with a max scale and a concurrency target within its container concurrency', () => {
    for (const svc of services) {
      const annotations = svc.spec.template.metadata.annotations;
      const [minScale, maxScale, target] = ['min-scale', 'max-scale', 'target'].map((a) => Number(annotations[`autoscaling.knative.dev/${a}`]));
      const stage = stageFunctions.some((s) => `heimdall-${s.name}` === svc.metadata.name);
      expect({ name: svc.metadata.name, scalesToZero: minScale === 0 }).toEqual({ name: svc.metadata.name, scalesToZero: stage });
      expect(maxScale).toBeGreaterThanOrEqual(Math.max(1, minScale!));
      expect(target).toBeGreaterThan(0);
      expect(target).toBeLessThanOrEqual(svc.spec.template.spec.containerConcurrency);
    }
  });

  it('probes endpoints the function really serves', async () => {
    const config = loadConfig({ HEIMDALL_DATA_DIR: await mkdtemp(join(tmpdir(), 'heimdall-knative-')) });
    const app = createFunctionApp(stageFunctions[0]!, { ...(await createAdapters(config)), config, logger: createLogger('silent'), scratchDir: tmpdir() });
    for (const svc of services) {
      const { readinessProbe, livenessProbe } = containerOf(svc);
      expect([readinessProbe.httpGet.path, livenessProbe.httpGet.path]).toEqual(['/health/readiness', '/health/liveness']);
      expect((await app.request(readinessProbe.httpGet.path)).status).toBe(200);
      expect((await app.request(livenessProbe.httpGet.path)).status).toBe(200);
    }
  });

  it('runs one image and one configuration everywhere, credentials only from the Secret', () => {
    const containers = [...services.map(containerOf), ...ofKind('apps/v1', 'Deployment').map((d) => d.spec.template.spec.containers[0])];
    const images = new Set(containers.map((c: Manifest) => c.image.replace(/-cuda$/, '')));
    expect(images.size).toBe(1);
    expect([...images][0]).toMatch(/^[\w.-]+(\/[\w.-]+)+:\d+\.\d+\.\d+$/);
    for (const container of containers) {
      expect(container.envFrom).toEqual([{ configMapRef: { name: 'heimdall-config' } }, { secretRef: { name: 'heimdall-credentials' } }]);
      expect(container.securityContext).toMatchObject({ runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true });
    }
    // The configuration passes the same validation as at start-up, with every override applied.
    for (const container of containers) expect(() => loadConfig(environmentOf(container))).not.toThrow();
    const data = configMap('heimdall', 'heimdall-config');
    expect(Object.keys(data).filter((k) => /KEY|SECRET|TOKEN|PASSWORD|WEBHOOK/.test(k))).toEqual([]);
    expect(documents.filter((d) => d.kind === 'Secret')).toEqual([]);
    expect(new Set(documents.filter((d) => d.metadata.namespace !== 'knative-serving' && d.kind !== 'Namespace').map((d) => d.metadata.namespace))).toEqual(new Set(['heimdall']));
  });
});

describe('Dockerfile', () => {
  const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8');
  const instructions = dockerfile.replace(/\\\n/g, ' ').split('\n').filter((l) => l.trim() && !l.startsWith('#'));
  const finalStage = instructions.slice(instructions.findLastIndex((l) => l.startsWith('FROM ')));

  it('builds in stages and installs production dependencies only, with the project .npmrc', () => {
    expect(instructions.filter((l) => l.startsWith('FROM ')).length).toBeGreaterThanOrEqual(2);
    const copyNpmrc = instructions.findIndex((l) => /^COPY .*\.npmrc/.test(l));
    const install = instructions.findIndex((l) => l === 'RUN npm ci --omit=dev');
    expect(copyNpmrc).toBeGreaterThanOrEqual(0);
    expect(install).toBeGreaterThan(copyNpmrc);
  });

  it('runs `heimdall function <stage>` as a numeric non-root user, with a health check on readiness', () => {
    const user = finalStage.find((l) => l.startsWith('USER '))?.split(' ')[1];
    expect(user).toMatch(/^\d+(:\d+)?$/);
    expect(user).not.toMatch(/^0(:|$)/);
    expect(finalStage).toContain('ENTRYPOINT ["node", "bin/heimdall.js", "function"]');
    expect(finalStage.find((l) => l.startsWith('HEALTHCHECK'))).toMatch(/\/health\/readiness/);
  });

  it('has a CUDA variant that installs onnxruntime-node’s CUDA provider', () => {
    expect(dockerfile).toMatch(/^FROM nvidia\/cuda:12[\w.-]*cudnn[\w.-]* AS runtime-cuda$/m);
    expect(dockerfile).toMatch(/ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install\.js/);
    expect(finalStage[0]).toBe('FROM runtime-${VARIANT}');
  });

  it('leaves tests, local data and dependencies of the build machine out of the image', () => {
    const ignored = readFileSync(join(root, '.dockerignore'), 'utf8').split('\n');
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', '.heimdall', 'test', '**/*.test.ts', '.git']));
  });
});
