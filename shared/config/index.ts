import { z } from 'zod';
import { ErrorCodes, HeimdallError } from '../errors/index.ts';
import { VariantName } from '../events/schemas.ts';
import { checkAliasName } from '../gate/promotion.ts';
import { DEFAULT_ALIAS, DEFAULT_MODEL_NAME } from '../registry/model-registry.ts';
import { CHECKPOINTS_BUCKET, isBucketName } from '../storage/object-store.ts';
import { endpointProblem, type ServerSideEncryption, type UploadChecksum } from '../storage/s3-settings.ts';

/**
 * Configuration from environment variables, validated once at start-up: a bad value stops the
 * process with a message naming the variable. With no service variables set, the embedded default
 * (filesystem store and local registry in HEIMDALL_DATA_DIR) is used.
 */
/** An unset or empty variable is absent. */
const optional = <T extends z.ZodType>(schema: T) => z.preprocess((v) => (v === '' ? undefined : v), schema.optional());
const number = (fallback: number) => z.coerce.number().refine(Number.isFinite, 'must be a number').default(fallback);

const Environment = z.object({
  HEIMDALL_DATA_DIR: z.string().min(1).default('.heimdall'),
  HEIMDALL_MODEL_NAME: z.string().min(1).default(DEFAULT_MODEL_NAME),
  HEIMDALL_MODEL_ALIAS: z.string().min(1).default(DEFAULT_ALIAS).superRefine((alias, ctx) => {
    // The gate's moves must not be refused after a model was registered: the same rule promote() applies.
    try {
      checkAliasName(alias);
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: (error as Error).message });
    }
  }),
  HEIMDALL_OPSET: z.enum(['14', '17', '20']).default('14').transform(Number),
  HEIMDALL_PARITY_TOLERANCE: number(1e-5).refine((v) => v > 0, 'must be positive'),
  /** Samples compared against the reference forward pass when a checkpoint has no golden samples. */
  HEIMDALL_PARITY_SAMPLES: z.coerce.number().int().min(1).max(64).default(4),
  /**
   * Derived models exported beside the fp32 one, comma separated (DESIGN §3 Variants). Opt-in: each
   * doubles what parity and the benchmark measure and trades accuracy for size and speed, which is
   * a deployer's choice, not the pipeline's.
   */
  HEIMDALL_VARIANTS: z
    .string()
    .default('')
    .transform((v) => [...new Set(v.split(',').map((name) => name.trim()).filter(Boolean))])
    .pipe(z.array(z.enum(VariantName.options, { error: `must be variant names separated by commas (${VariantName.options.join(', ')})` }))),
  /**
   * The int8 variant's largest absolute error per output against the fp32 model's, on parity's
   * samples. Measured on the fixtures (npm run bench:int8, test/integration/int8-oracle.test.ts): at
   * most 1.33e-3 (tiny, base and large, PyTorch's golden inputs and the reference samples); 1e-2
   * leaves 7x headroom and still refuses a quantization as coarse as quantize_dynamic's with the
   * heads in int8 too (1.07e-2 on large).
   */
  HEIMDALL_INT8_TOLERANCE: number(1e-2).refine((v) => v > 0, 'must be positive'),
  HEIMDALL_EXECUTION_PROVIDER: z.enum(['cpu', 'cuda']).default('cpu'),
  HEIMDALL_BENCHMARK_THREADS: z.coerce.number().int().min(0).default(0),
  /** Batch sizes timed by the benchmark (DESIGN §5: 1, 8 and 32). */
  HEIMDALL_BENCHMARK_BATCHES: z
    .string()
    .default('1,8,32')
    .transform((v) => v.split(',').map(Number))
    .refine((b) => b.length > 0 && b.every((n) => Number.isInteger(n) && n > 0), 'must be positive integers separated by commas'),
  /** Warm-up runs at least, per batch size; more until the timings settle (shared/gate/statistics.ts). */
  HEIMDALL_BENCHMARK_WARMUP: z.coerce.number().int().min(0).default(3),
  /** Time for the timed runs of each batch size (candidate and alias holder together when both are timed). */
  HEIMDALL_BENCHMARK_BUDGET_MS: z.coerce.number().int().min(1).default(3000),
  /** Timed runs at least per batch size, even past the budget (an interval needs a few). */
  HEIMDALL_BENCHMARK_MIN_RUNS: z.coerce.number().int().min(3).default(10),
  /** The gate calls a model slower when the lower bound of its batch-1 p50 ratio to the alias holder exceeds 1 + this. */
  HEIMDALL_REGRESSION_THRESHOLD: number(0.1).refine((v) => v >= 0, 'must be >= 0'),
  /** The gate's latency check: `block` holds the alias back on a regression, `warn` only says so, `off` skips it. */
  HEIMDALL_GATE_LATENCY: z.enum(['block', 'warn', 'off']).default('block'),
  /** The gate's metric check, `<training metric>:<min|max>` (which way is better), or `off`. */
  HEIMDALL_GATE_METRIC: z
    .string()
    .default('val_loss:min')
    .refine((v) => v === 'off' || /^[A-Za-z0-9_./-]+:(min|max)$/.test(v), 'must be <metric>:min, <metric>:max or off'),
  HEIMDALL_GATE_METRIC_POLICY: z.enum(['block', 'warn']).default('block'),
  /** How much worse than the alias holder's the candidate's metric may be (absolute, in the metric's units). */
  HEIMDALL_GATE_METRIC_TOLERANCE: number(0).refine((v) => v >= 0, 'must be >= 0'),
  HEIMDALL_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('warn'),
  // Services (DESIGN §3 CLI): each port uses its service when configured, else the embedded adapter.
  NATS_URL: optional(z.string().min(1)),
  /** Several processes serving one stage share its durable consumer; these bound a message's life. */
  HEIMDALL_ACK_WAIT_SECONDS: z.coerce.number().int().min(5).default(60),
  HEIMDALL_MAX_DELIVER: z.coerce.number().int().min(1).default(5),
  /**
   * How often `serve` sweeps the checkpoint bucket for uploads whose notification never came
   * (reconciliation; one process at a time): a duration (`90s`, `10m`, `1h`), or `off`.
   */
  HEIMDALL_RECONCILE_INTERVAL: z
    .string()
    .default('10m')
    .transform((v, ctx) => {
      if (v === 'off') return undefined;
      const ms = durationMs(v);
      if (ms === undefined || ms < 1000) ctx.addIssue({ code: 'custom', message: 'must be a duration of at least 1s (e.g. 30s, 10m, 1h) or off' });
      return ms;
    }),
  /** The bucket the sweep (and `heimdall reconcile` without --bucket) lists: where the trainer uploads. */
  HEIMDALL_RECONCILE_BUCKET: z.string().default(CHECKPOINTS_BUCKET).refine(isBucketName, 'must be a bucket name'),
  /** Copies of each stream, consumer and KV bucket in a JetStream cluster (3 for the usual cluster of three); provisioning only ever raises it. */
  HEIMDALL_NATS_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
  /** `http(s)://host[:port]`, nothing after: a path (a server behind `/minio`), a query or credentials are refused. */
  S3_ENDPOINT: optional(
    z.string().superRefine((endpoint, ctx) => {
      const problem = endpointProblem(endpoint);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
  ),
  S3_ACCESS_KEY: optional(z.string().min(1)),
  S3_SECRET_KEY: optional(z.string().min(1)),
  S3_REGION: z.string().min(1).default('us-east-1'),
  /** `true`: buckets addressed by path (MinIO's way); `false`: by virtual host, `<bucket>.<host>` (AWS's way). */
  S3_FORCE_PATH_STYLE: z.enum(['true', 'false'], { error: 'must be true or false' }).default('true').transform((v) => v === 'true'),
  /** Server-side encryption asked for on every upload: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS, with S3_SSE_KMS_KEY_ID). */
  S3_SSE: optional(z.enum(['AES256', 'aws:kms'], { error: 'must be AES256 or aws:kms' })),
  S3_SSE_KMS_KEY_ID: optional(z.string().min(1)),
  /** `sha256`: uploads carry x-amz-checksum-sha256, checked by the server; `off` for servers that refuse it (Content-MD5 then). */
  S3_CHECKSUM: z.enum(['sha256', 'off'], { error: 'must be sha256 or off' }).default('sha256'),
  MLFLOW_TRACKING_URI: optional(z.url()),
  MLFLOW_TRACKING_TOKEN: optional(z.string().min(1)),
  MLFLOW_TRACKING_USERNAME: optional(z.string().min(1)),
  MLFLOW_TRACKING_PASSWORD: optional(z.string().min(1)),
  /** The Knative Broker's address, injected by a SinkBinding into the ingest adapter. */
  K_SINK: optional(z.url()),
  MLFLOW_EXPERIMENT_NAME: z.string().min(1).default('heimdall-localization'),
  /** Alerts (functions/alerts): webhook URLs separated by commas; unset, no alerts are sent. */
  HEIMDALL_ALERT_WEBHOOKS: optional(
    z
      .string()
      .transform((v) => v.split(',').map((u) => u.trim()).filter(Boolean))
      .pipe(z.array(z.url({ protocol: /^https?$/, error: 'must be http(s) URLs separated by commas' })).min(1, 'must name at least one URL')),
  ),
  /** Alerts sent per minute at most (a token bucket: bursts up to this many); the rest are dropped and counted. */
  HEIMDALL_ALERT_RATE_LIMIT: z.coerce.number().int().min(1).default(20),
  HEIMDALL_ALERT_RETRIES: z.coerce.number().int().min(0).max(10).default(3),
  /** First retry delay; it doubles with each retry. */
  HEIMDALL_ALERT_BACKOFF_MS: z.coerce.number().int().min(1).default(1000),
  HEIMDALL_ALERT_TIMEOUT_MS: z.coerce.number().int().min(100).default(5000),
})
  .refine((e) => !e.S3_ENDPOINT || (e.S3_ACCESS_KEY && e.S3_SECRET_KEY), { message: 'S3_ACCESS_KEY and S3_SECRET_KEY are required with S3_ENDPOINT', path: ['S3_ACCESS_KEY'] })
  .refine((e) => e.S3_SSE !== 'aws:kms' || e.S3_SSE_KMS_KEY_ID, { message: 'is required with S3_SSE=aws:kms', path: ['S3_SSE_KMS_KEY_ID'] })
  .refine((e) => !e.S3_SSE_KMS_KEY_ID || e.S3_SSE === 'aws:kms', { message: 'applies only with S3_SSE=aws:kms', path: ['S3_SSE_KMS_KEY_ID'] })
  .refine((e) => !e.MLFLOW_TRACKING_USERNAME === !e.MLFLOW_TRACKING_PASSWORD, { message: 'MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD go together', path: ['MLFLOW_TRACKING_USERNAME'] });

export interface Config {
  readonly dataDir: string;
  readonly modelName: string;
  readonly alias: string;
  readonly opset: 14 | 17 | 20;
  readonly parity: { readonly tolerance: number; readonly samples: number };
  /** The variants exported and carried through every stage (none unless configured). */
  readonly variants: readonly VariantName[];
  /** Each variant's tolerance: its largest absolute error per output against the fp32 model's. */
  readonly variantTolerance: Readonly<Record<VariantName, number>>;
  readonly benchmark: {
    readonly provider: 'cpu' | 'cuda';
    readonly batches: readonly number[];
    readonly threads: number;
    readonly warmup: number;
    readonly budgetMs: number;
    readonly minRuns: number;
    readonly regressionThreshold: number;
  };
  readonly gate: GateConfig;
  readonly logLevel: string;
  /** Where the ingest adapter sends its events instead of JetStream (Knative). */
  readonly sink?: string;
  readonly nats?: { readonly url: string; readonly ackWaitSeconds: number; readonly maxDeliver: number; readonly replicas: number };
  /** The S3ObjectStore's options (shared/storage/s3.ts). */
  readonly s3?: {
    readonly endpoint: string;
    readonly accessKey: string;
    readonly secretKey: string;
    readonly region: string;
    readonly forcePathStyle: boolean;
    readonly sse?: ServerSideEncryption;
    readonly checksum: UploadChecksum;
  };
  readonly mlflow?: { readonly trackingUri: string; readonly experimentName: string; readonly token?: string; readonly username?: string; readonly password?: string };
  readonly alerts?: AlertsConfig;
  /** The reconciliation sweep: its bucket, and how often `serve` runs it (undefined: never). */
  readonly reconcile: { readonly bucket: string; readonly intervalMs?: number };
}

/** DESIGN §3 The gate: which checks run and whether a failure holds the alias back (`block`) or is only reported (`warn`). */
export interface GateConfig {
  readonly latency: 'block' | 'warn' | 'off';
  readonly metric?: { readonly name: string; readonly better: 'lower' | 'higher'; readonly tolerance: number; readonly policy: 'block' | 'warn' };
}

export interface AlertsConfig {
  readonly webhooks: readonly string[];
  readonly ratePerMinute: number;
  readonly retries: number;
  readonly backoffMs: number;
  readonly timeoutMs: number;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = Environment.safeParse(env);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${String(i.path[0])}: ${i.message}`).join('; ');
    throw new HeimdallError(ErrorCodes.USAGE, `invalid configuration: ${issues}`);
  }
  const e = parsed.data;
  return {
    dataDir: e.HEIMDALL_DATA_DIR,
    modelName: e.HEIMDALL_MODEL_NAME,
    alias: e.HEIMDALL_MODEL_ALIAS,
    opset: e.HEIMDALL_OPSET as 14 | 17 | 20,
    parity: { tolerance: e.HEIMDALL_PARITY_TOLERANCE, samples: e.HEIMDALL_PARITY_SAMPLES },
    variants: e.HEIMDALL_VARIANTS,
    variantTolerance: { int8: e.HEIMDALL_INT8_TOLERANCE },
    benchmark: {
      provider: e.HEIMDALL_EXECUTION_PROVIDER,
      batches: e.HEIMDALL_BENCHMARK_BATCHES,
      threads: e.HEIMDALL_BENCHMARK_THREADS,
      warmup: e.HEIMDALL_BENCHMARK_WARMUP,
      budgetMs: e.HEIMDALL_BENCHMARK_BUDGET_MS,
      minRuns: e.HEIMDALL_BENCHMARK_MIN_RUNS,
      regressionThreshold: e.HEIMDALL_REGRESSION_THRESHOLD,
    },
    gate: {
      latency: e.HEIMDALL_GATE_LATENCY,
      ...(e.HEIMDALL_GATE_METRIC === 'off'
        ? {}
        : {
            metric: {
              name: e.HEIMDALL_GATE_METRIC.slice(0, e.HEIMDALL_GATE_METRIC.lastIndexOf(':')),
              better: e.HEIMDALL_GATE_METRIC.endsWith(':min') ? ('lower' as const) : ('higher' as const),
              tolerance: e.HEIMDALL_GATE_METRIC_TOLERANCE,
              policy: e.HEIMDALL_GATE_METRIC_POLICY,
            },
          }),
    },
    logLevel: e.HEIMDALL_LOG_LEVEL,
    reconcile: { bucket: e.HEIMDALL_RECONCILE_BUCKET, ...(e.HEIMDALL_RECONCILE_INTERVAL !== undefined ? { intervalMs: e.HEIMDALL_RECONCILE_INTERVAL } : {}) },
    ...(e.K_SINK ? { sink: e.K_SINK } : {}),
    ...(e.NATS_URL ? { nats: { url: e.NATS_URL, ackWaitSeconds: e.HEIMDALL_ACK_WAIT_SECONDS, maxDeliver: e.HEIMDALL_MAX_DELIVER, replicas: e.HEIMDALL_NATS_REPLICAS } } : {}),
    ...(e.S3_ENDPOINT
      ? {
          s3: {
            endpoint: e.S3_ENDPOINT,
            accessKey: e.S3_ACCESS_KEY!,
            secretKey: e.S3_SECRET_KEY!,
            region: e.S3_REGION,
            forcePathStyle: e.S3_FORCE_PATH_STYLE,
            ...(e.S3_SSE === 'aws:kms' ? { sse: { algorithm: 'aws:kms' as const, kmsKeyId: e.S3_SSE_KMS_KEY_ID! } } : e.S3_SSE ? { sse: { algorithm: e.S3_SSE } } : {}),
            checksum: e.S3_CHECKSUM,
          },
        }
      : {}),
    ...(e.MLFLOW_TRACKING_URI
      ? {
          mlflow: {
            trackingUri: e.MLFLOW_TRACKING_URI,
            experimentName: e.MLFLOW_EXPERIMENT_NAME,
            ...(e.MLFLOW_TRACKING_TOKEN ? { token: e.MLFLOW_TRACKING_TOKEN } : {}),
            ...(e.MLFLOW_TRACKING_USERNAME ? { username: e.MLFLOW_TRACKING_USERNAME, password: e.MLFLOW_TRACKING_PASSWORD! } : {}),
          },
        }
      : {}),
    ...(e.HEIMDALL_ALERT_WEBHOOKS
      ? {
          alerts: {
            webhooks: e.HEIMDALL_ALERT_WEBHOOKS,
            ratePerMinute: e.HEIMDALL_ALERT_RATE_LIMIT,
            retries: e.HEIMDALL_ALERT_RETRIES,
            backoffMs: e.HEIMDALL_ALERT_BACKOFF_MS,
            timeoutMs: e.HEIMDALL_ALERT_TIMEOUT_MS,
          },
        }
      : {}),
  };
}

const DURATION_UNITS_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `250ms`, `30s`, `10m`, `1.5h` in milliseconds; undefined for anything else. */
export function durationMs(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  return match ? Number(match[1]) * DURATION_UNITS_MS[match[2]!]! : undefined;
}
