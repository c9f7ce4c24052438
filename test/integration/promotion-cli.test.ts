/**
 * `heimdall promote`, `rollback` and `versions` as a user runs them, after two real pipeline runs:
 * on the local registry and on a real MLflow server, each move announced as `model.promoted` on a
 * real nats-server, and the promoted version what Python MLflow loads from `models:/…@production`.
 */
import { userInfo } from 'node:os';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeEvent } from '../../shared/bus/nats/codec.ts';
import type { AnyCloudEvent } from '../../shared/events/index.ts';
import type { RunReport } from '../../shared/pipeline/report.ts';
import { heimdallCommand, heimdallRun } from '../support/heimdall-cli.ts';
import { waitFor } from '../support/nats-pipeline.ts';
import { startNatsServer, type NatsServer } from '../support/nats-server.ts';
import { MLFLOW_OFFLINE_ENV, startMlflowServer, type MlflowServer } from '../support/services/mlflow-server.ts';
import { runServicesPython } from '../support/services/venv.ts';
import { writeSmallCheckpoint } from '../support/small-model.ts';
import { tempDir } from '../support/temp.ts';

const MODEL = 'heimdall-localization';
/** DESIGN §3 NATS: every event on `heimdall.events.<type without heimdall.>`. */
const PROMOTED_SUBJECT = 'heimdall.events.model.promoted';
const actor = userInfo().username;

interface Versions {
  name: string;
  versions: Array<{ version: string; sha256: string; aliases: string[]; gate: { passed: boolean; checks: unknown[] } | null; created: string }>;
  aliasHistory: Record<string, Array<{ version: string; at: string; reason: string; previous?: string; actor?: string }>>;
}

const dir = await tempDir('heimdall-promotion-');
let nats: NatsServer;
let nc: NatsConnection;
/** Every `model.promoted` seen on NATS, decoded as a CloudEvent. */
const promoted: AnyCloudEvent[] = [];

beforeAll(async () => {
  nats = await startNatsServer();
  nc = await connect({ servers: nats.url });
  const subscription = nc.subscribe(PROMOTED_SUBJECT);
  void (async () => {
    for await (const message of subscription) promoted.push(decodeEvent(message.headers, message.string()));
  })();
  await nc.flush();
});
afterAll(async () => {
  await nc?.close();
  await nats?.stop();
});

/**
 * Runs the pipeline on two distinct small checkpoints into one registry, then moves `production`
 * 1 -> 2 -> back to 1 by hand, checking each step's line, the event on NATS and `versions --json`.
 */
function promotionScenario(label: string, env: () => Record<string, string>) {
  describe(`heimdall promote / rollback / versions on the ${label}`, () => {
    const workdir = join(dir, label.replace(/\W+/g, '-'));
    const reports: RunReport[] = [];
    const cli = (...argv: string[]) => heimdallCommand(argv, { HEIMDALL_DATA_DIR: workdir, NATS_URL: nats.url, ...env() });
    const versions = async () => JSON.parse((await cli('versions', '--json')).stdout.at(-1)!) as Versions;
    /** Runs a command that moves the alias and returns the one `model.promoted` it published. */
    const move = async (argv: string[], line: string) => {
      const before = promoted.length;
      const result = await cli(...argv);
      expect(result.stderr.filter((l) => l.startsWith('error')), argv.join(' ')).toEqual([]);
      expect(result).toMatchObject({ code: 0, stdout: [line] });
      await waitFor(`model.promoted after ${argv.join(' ')}`, () => promoted.length > before, 10_000);
      expect(promoted).toHaveLength(before + 1);
      return promoted.at(-1)!;
    };

    beforeAll(async () => {
      for (const seed of [41, 42]) {
        const checkpoint = join(dir, `${label}-${seed}.pth`);
        await writeSmallCheckpoint(checkpoint, { seed });
        const { code, report, stderr } = await heimdallRun(checkpoint, workdir, env());
        if (code !== 0) throw new Error(`heimdall run failed: ${stderr}`);
        reports.push(report);
      }
    });

    it('registers both runs as versions 1 and 2, each with its gate verdict', async () => {
      expect(reports.map((r) => r.registry?.version)).toEqual(['1', '2']);
      const listed = await versions();
      expect(listed.name).toBe(MODEL);
      expect(listed.versions.map((v) => [v.version, v.sha256])).toEqual(reports.map((r, i) => [String(i + 1), r.onnx!.sha256]));
      for (const v of listed.versions) expect(v.gate, `version ${v.version}`).toMatchObject({ passed: expect.any(Boolean), checks: expect.any(Array) });
      expect(listed.aliasHistory.production).toBeUndefined();
    });

    it('promotes by hand and rolls back, publishing model.promoted for each move, and keeps the history', async () => {
      const first = await move(['promote', '1', '--alias', 'production'], `${MODEL}@production: unset -> v1 (manual)`);
      expect(first).toMatchObject({ type: 'heimdall.model.promoted', source: 'heimdall/cli', subject: `${MODEL}@production` });
      expect(first.data).toEqual({ runId: reports[0]!.runId, name: MODEL, version: '1', alias: 'production', reason: 'manual', actor });

      const second = await move(['promote', '2', '--alias', 'production'], `${MODEL}@production: v1 -> v2 (manual)`);
      expect(second.data).toEqual({ runId: reports[1]!.runId, name: MODEL, version: '2', alias: 'production', previous: '1', reason: 'manual', actor });

      const back = await move(['rollback', '--alias', 'production'], `${MODEL}@production: v2 -> v1 (rollback)`);
      expect(back.data).toEqual({ runId: reports[0]!.runId, name: MODEL, version: '1', alias: 'production', previous: '2', reason: 'rollback', actor });
      expect(new Set([first.id, second.id, back.id]).size).toBe(3);

      // Promoting the holder again moves nothing and announces nothing.
      const before = promoted.length;
      expect((await cli('promote', '1', '--alias', 'production')).stdout).toEqual([`${MODEL}@production already names v1: nothing changed`]);
      await nc.flush();
      expect(promoted).toHaveLength(before);

      const listed = await versions();
      expect(listed.versions.find((v) => v.aliases.includes('production'))?.version).toBe('1');
      expect(listed.aliasHistory.production!.map((m) => [m.version, m.previous, m.reason, m.actor])).toEqual([
        ['1', undefined, 'manual', actor],
        ['2', '1', 'manual', actor],
        ['1', '2', 'rollback', actor],
      ]);
      const times = listed.aliasHistory.production!.map((m) => Date.parse(m.at));
      expect([...times].sort((a, b) => a - b)).toEqual(times);

      const table = (await cli('versions')).stdout;
      expect(table).toContain(`${MODEL}@production -> v1, 3 moves, newest first:`);
    });

    it('refuses an unknown version and moves nothing', async () => {
      const result = await cli('promote', '7', '--alias', 'production');
      expect(result).toMatchObject({ code: 1, stderr: [`error: REGISTRY_REJECTED: ${MODEL} has no version 7`] });
      expect((await versions()).versions.find((v) => v.aliases.includes('production'))?.version).toBe('1');
    });
  });
}

promotionScenario('local registry', () => ({}));

let mlflow: MlflowServer;
describe('on a real MLflow server', () => {
  beforeAll(async () => {
    mlflow = await startMlflowServer();
  });
  afterAll(async () => {
    await mlflow?.stop();
  });

  promotionScenario('MLflow registry', () => ({ ...mlflow.env, ...MLFLOW_OFFLINE_ENV }));

  it('serves the promoted version to Python MLflow as models:/heimdall-localization@production', async () => {
    const listed = JSON.parse((await heimdallCommand(['versions', '--json'], { ...mlflow.env, ...MLFLOW_OFFLINE_ENV })).stdout.at(-1)!) as Versions;
    const holder = listed.versions.find((v) => v.aliases.includes('production'));
    expect(holder?.version, 'the version holding production after the rollback').toBe('1');
    const inputs = join(dir, 'inputs.f32');
    await writeFile(inputs, Buffer.from(new Float32Array(3 * 128 * 32).map((_, i) => Math.sin(i)).buffer));
    const loaded = JSON.parse(await runServicesPython('load_registered_model.py', [`models:/${MODEL}@production`, inputs, '1'], { ...mlflow.env, ...MLFLOW_OFFLINE_ENV })) as { sha256: string; version: { version: string; aliases: string[] }; onnx: Record<string, number[]> };
    expect(loaded.version.version).toBe('1');
    expect(loaded.version.aliases).toContain('production');
    expect(loaded.sha256).toBe(holder!.sha256);
    expect(loaded.onnx.positions).toHaveLength(2);
  });
});
