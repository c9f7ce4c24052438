import { execFile, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import type { GateVerdict } from '../events/index.ts';
import { LocalModelRegistry } from '../registry/local.ts';
import { FsRunStateStore } from '../pipeline/run-state/fs.ts';
import { stageStarted } from '../pipeline/run-state/run-state.ts';
import { DEFAULT_MODEL_NAME, GATE_TAG, PIPELINE_RUN_TAG } from '../registry/model-registry.ts';
import { runCli } from './main.ts';

const heimdall = join(import.meta.dirname, '../../bin/heimdall.js');

/** Runs the CLI in-process, capturing what it prints. */
async function cli(...argv: string[]) {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await runCli(argv, { io: { stdout: (l) => stdout.push(l), stderr: (l) => stderr.push(l) } });
  return { code, stdout, stderr };
}

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
});

describe('heimdall export', () => {
  it('prints one summary line: variant, parameters, opset, bytes, seconds, warnings', async () => {
    const checkpoint = join(dir, 'tiny.pth');
    expect((await cli('sample', '--variant', 'tiny', '--out', checkpoint, '--layout', 'lightning')).code).toBe(0);
    const { code, stdout, stderr } = await cli('export', checkpoint, '--out', join(dir, 'tiny.onnx'), '--opset', '17');
    expect(code).toBe(0);
    expect(stderr).toEqual([]);
    expect(stdout).toHaveLength(1);
    expect(stdout[0]).toMatch(/^exported tiny LocalizationNet \(28\.\d+M parameters\) opset 17 -> .*tiny\.onnx \(11\d\.\d MB\) in \d+\.\d\d s, 0 warnings$/);
  });

  it('rejects an opset it does not support', async () => {
    const { code, stderr } = await cli('export', 'x.pth', '--out', 'x.onnx', '--opset', '13');
    expect(code).toBe(2);
    expect(stderr).toEqual(['error: USAGE: --opset must be one of 14, 17, 20, got 13']);
  });

  it('checks --out before any work: a FIFO there is refused with NOT_A_FILE before the checkpoint is even opened', async () => {
    const fifo = join(dir, 'pipe.onnx');
    execFileSync('mkfifo', [fifo]);
    const { code, stdout, stderr } = await cli('export', join(dir, 'does-not-exist.pth'), '--out', fifo);
    expect(code).toBe(1);
    expect(stdout).toEqual([]);
    expect(stderr).toEqual([`error: NOT_A_FILE: ${fifo} is a FIFO, not a regular file: refusing to replace it`]);
  });

  it('exits non-zero with a one-line error naming the code on bad input', async () => {
    const bad = join(dir, 'not-a-checkpoint.pth');
    await import('node:fs/promises').then((fs) => fs.writeFile(bad, 'hello'));
    const run = promisify(execFile)(process.execPath, [heimdall, 'export', bad, '--out', join(dir, 'bad.onnx')]);
    await expect(run).rejects.toMatchObject({ code: 1, stderr: `error: UNSUPPORTED_FORMAT: ${bad} is neither a torch zip checkpoint nor safetensors\n`, stdout: '' });
  });
});

describe('heimdall versions, promote and rollback on the local registry', () => {
  const MODEL = DEFAULT_MODEL_NAME;
  const failedLatency: GateVerdict = { passed: false, checks: [{ name: 'latency', passed: false, value: 1.4, limit: 1.1, policy: 'block', detail: 'p50 ratio 1.40 [1.31, 1.52]' }, { name: 'metric', passed: false, value: 0.3, limit: 0.2, policy: 'warn', detail: 'val_loss 0.3 > 0.2' }] };
  const passed: GateVerdict = { passed: true, checks: [] };
  const saved = process.env.HEIMDALL_DATA_DIR;
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await tempDir();
    process.env.HEIMDALL_DATA_DIR = dataDir;
    const registry = new LocalModelRegistry(dataDir);
    for (const [i, gate] of [passed, failedLatency, undefined].entries()) {
      const sha256 = String(i + 1).repeat(64);
      await registry.register({ name: MODEL, sha256, pipelineRunId: sha256.slice(0, 16), modelPath: join(dataDir, 'unused.onnx'), modelUri: `file:///models/${i}.onnx`, tags: { [PIPELINE_RUN_TAG]: sha256.slice(0, 16), ...(gate ? { [GATE_TAG]: JSON.stringify(gate) } : {}) }, params: {}, metrics: {}, report: {} });
    }
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.HEIMDALL_DATA_DIR;
    else process.env.HEIMDALL_DATA_DIR = saved;
  });
  const json = async () => JSON.parse((await cli('versions', '--json')).stdout.at(-1)!) as { name: string; versions: Array<{ version: string; sha256: string; aliases: string[]; gate: GateVerdict | null; created: string }>; aliasHistory: Record<string, Array<{ version: string; previous?: string; reason: string; actor: string; at: string }>> };

  it('lists versions with their gate verdicts before any alias is set', async () => {
    const listed = await json();
    expect(listed.name).toBe(MODEL);
    expect(listed.versions.map((v) => [v.version, v.sha256[0], v.aliases, v.gate?.passed ?? null])).toEqual([
      ['1', '1', [], true],
      ['2', '2', [], false],
      ['3', '3', [], null],
    ]);
    expect(listed.aliasHistory).toEqual({});
    const { code, stdout } = await cli('versions');
    expect(code).toBe(0);
    const table = stdout.join('\n').split('\n');
    expect(table[0]).toBe(`${MODEL}: 3 versions`);
    expect(table[1]).toMatch(/^ {2}version +sha256 +aliases +gate +created$/);
    expect(table[2]).toMatch(/^ {2}3 +333333333333 +- +- +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
    expect(table[3]).toMatch(/^ {2}2 +222222222222 +- +failed: latency, warned: metric +\d{4}-/);
    expect(table[4]).toMatch(/^ {2}1 +111111111111 +- +passed +\d{4}-/);
  });

  it('moves an alias by hand and back, recording who and why, and says when nothing changed', async () => {
    const actor = userInfo().username;
    // Version 2's run has a record (as `heimdall run` leaves it): the move is filed on it for status and watch.
    const runState = new FsRunStateStore(dataDir);
    const run2 = '2'.repeat(16);
    await runState.update(run2, (state) => stageStarted(state, run2, 'register'));
    expect(await cli('promote', '2', '--alias', 'production')).toEqual({ code: 0, stdout: [`${MODEL}@production: unset -> v2 (manual)`], stderr: [] });
    expect((await runState.get(run2))?.promotions).toEqual([expect.objectContaining({ type: 'heimdall.model.promoted', data: expect.objectContaining({ version: '2', alias: 'production', reason: 'manual', actor }) })]);
    expect((await cli('promote', '3', '--alias', 'production')).stdout).toEqual([`${MODEL}@production: v2 -> v3 (manual)`]);
    expect((await cli('promote', '3', '--alias', 'production')).stdout).toEqual([`${MODEL}@production already names v3: nothing changed`]);
    expect((await cli('rollback', '--alias', 'production')).stdout).toEqual([`${MODEL}@production: v3 -> v2 (rollback)`]);
    // Without --alias: the configured alias (HEIMDALL_MODEL_ALIAS, default staging).
    expect((await cli('promote', '1')).stdout).toEqual([`${MODEL}@staging: unset -> v1 (manual)`]);

    const listed = await json();
    expect(listed.versions.map((v) => [v.version, v.aliases])).toEqual([
      ['1', ['staging']],
      ['2', ['production']],
      ['3', []],
    ]);
    expect(listed.aliasHistory.production!.map((m) => [m.version, m.previous, m.reason, m.actor])).toEqual([
      ['2', undefined, 'manual', actor],
      ['3', '2', 'manual', actor],
      ['2', '3', 'rollback', actor],
    ]);
    expect(listed.aliasHistory.staging!.map((m) => m.version)).toEqual(['1']);

    const text = (await cli('versions')).stdout.join('\n');
    expect(text).toContain(`${MODEL}@production -> v2, 3 moves, newest first:`);
    expect(text).toMatch(new RegExp(`\\d\\d:\\d\\d:\\d\\d {2}v2 +rollback +by ${actor} \\(was v3\\)\\n`));
  });

  it('refuses bad arguments with USAGE (exit 2), and unknown versions or aliases with REGISTRY_REJECTED (exit 1)', async () => {
    for (const argv of [['promote'], ['promote', 'v2'], ['promote', '1', '2'], ['rollback', '3'], ['versions', 'extra'], ['promote', '1', '--stage', 'x'], ['promote', '1', '--alias', 'latest'], ['promote', '1', '--alias', 'v3']]) {
      const { code, stderr } = await cli(...argv);
      expect(code, argv.join(' ')).toBe(2);
      expect(stderr[0], argv.join(' ')).toMatch(/^error: USAGE: /);
    }
    // The configured alias follows the same rule, at start-up.
    const saved = process.env.HEIMDALL_MODEL_ALIAS;
    process.env.HEIMDALL_MODEL_ALIAS = 'Latest';
    try {
      expect(await cli('versions')).toMatchObject({ code: 2, stderr: [expect.stringMatching(/^error: USAGE: invalid configuration: HEIMDALL_MODEL_ALIAS: invalid alias name "Latest"/)] });
    } finally {
      if (saved === undefined) delete process.env.HEIMDALL_MODEL_ALIAS;
      else process.env.HEIMDALL_MODEL_ALIAS = saved;
    }
    expect((await cli('promote', '9')).stderr).toEqual([`error: REGISTRY_REJECTED: ${MODEL} has no version 9`]);
    expect((await cli('rollback', '--alias', 'canary'))).toMatchObject({ code: 1, stderr: [`error: REGISTRY_REJECTED: ${MODEL}@canary has never been set: nothing to roll back`] });
    expect((await cli('rollback'))).toMatchObject({ code: 1, stderr: [`error: REGISTRY_REJECTED: ${MODEL}@staging has had only version 1: nothing to roll back to`] });
  });

  it('moves nothing when NATS is configured but unreachable', async () => {
    // A port that was free a moment ago: nothing listens there.
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    await new Promise((resolve) => server.close(resolve));
    process.env.NATS_URL = `nats://127.0.0.1:${port}`;
    try {
      const { code, stdout, stderr } = await cli('promote', '3');
      expect(code).toBe(1);
      expect(stdout).toEqual([]);
      expect(stderr[0]).toMatch(new RegExp(`^error: IO_ERROR: cannot reach NATS at nats://127\\.0\\.0\\.1:${port}`));
    } finally {
      delete process.env.NATS_URL;
    }
    expect((await json()).versions.find((v) => v.aliases.includes('staging'))?.version).toBe('1');
  });
});
