import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
import { LocalModelRegistry } from './local.ts';
import type { RegistrationRequest } from './model-registry.ts';

let dir: string;
beforeAll(async () => {
  dir = await tempDir();
  await writeFile(join(dir, 'model.onnx'), 'onnx');
});

const NAME = 'heimdall-localization';
const gate = { reason: 'gate passed', actor: 'heimdall/register' } as const;

const request = (sha256: string, overrides: Partial<RegistrationRequest> = {}): RegistrationRequest => ({
  name: NAME,
  sha256,
  pipelineRunId: sha256.slice(0, 16),
  modelPath: join(dir, 'model.onnx'),
  modelUri: `file:///models/${sha256}.onnx`,
  tags: { 'training.val_loss': '0.31' },
  params: { variant: 'tiny' },
  metrics: { parity_max_abs_positions: 1e-7 },
  report: { runId: sha256.slice(0, 16) },
  ...overrides,
});

describe('LocalModelRegistry', () => {
  it('numbers versions, finds them by number and sha256, and moves no alias when registering', async () => {
    const registry = new LocalModelRegistry(join(dir, 'a'));
    const before = Date.now();
    const first = await registry.register(request('1'.repeat(64)));
    const second = await registry.register(request('2'.repeat(64)));
    expect([first.version.version, second.version.version]).toEqual(['1', '2']);
    expect(second.version).toMatchObject({ name: NAME, source: `file:///models/${'2'.repeat(64)}.onnx`, runId: '2'.repeat(16), aliases: [], tags: { sha256: '2'.repeat(64), 'training.val_loss': '0.31' } });
    expect(Date.parse(second.version.created)).toBeGreaterThanOrEqual(before - 1000);
    expect(await registry.getVersionByAlias(NAME, 'staging')).toBeUndefined();
    expect((await registry.getVersion(NAME, '1'))?.tags.sha256).toBe('1'.repeat(64));
    expect(await registry.getVersion(NAME, '3')).toBeUndefined();
    expect((await registry.findVersionBySha256(NAME, '2'.repeat(64)))?.version).toBe('2');
    expect((await registry.listVersions(NAME)).map((v) => v.version)).toEqual(['1', '2']);
    expect(await registry.listVersions('unknown-model')).toEqual([]);
    expect(registry.modelUri(second.version)).toBe(`models:/${NAME}/2`);
    expect(JSON.parse(await readFile(join(dir, 'a', 'registry', NAME, '2', 'report.json'), 'utf8'))).toEqual({ runId: '2'.repeat(16) });
  });

  it('moves aliases and keeps their history, oldest first; setting the holder again records nothing', async () => {
    const registry = new LocalModelRegistry(join(dir, 'history'));
    for (const sha of ['1', '2', '3']) await registry.register(request(sha.repeat(64)));
    expect(await registry.setAlias(NAME, 'staging', '1', gate)).toEqual({ moved: true });
    expect(await registry.setAlias(NAME, 'staging', '3', gate)).toEqual({ previous: '1', moved: true });
    expect(await registry.setAlias(NAME, 'staging', '3', gate)).toEqual({ previous: '3', moved: false });
    expect(await registry.setAlias(NAME, 'production', '2', { reason: 'manual', actor: 'ada' })).toEqual({ moved: true });
    expect(await registry.setAlias(NAME, 'staging', '1', { reason: 'rollback', actor: 'ada' })).toEqual({ previous: '3', moved: true });

    expect((await registry.getVersionByAlias(NAME, 'staging'))?.version).toBe('1');
    expect((await registry.getVersion(NAME, '2'))?.aliases).toEqual(['production']);
    expect((await registry.listVersions(NAME)).map((v) => v.aliases)).toEqual([['staging'], ['production'], []]);
    const history = await registry.aliasHistory(NAME);
    expect(history.staging!.map(({ version, previous, reason, actor }) => ({ version, previous, reason, actor }))).toEqual([
      { version: '1', previous: undefined, reason: 'gate passed', actor: 'heimdall/register' },
      { version: '3', previous: '1', reason: 'gate passed', actor: 'heimdall/register' },
      { version: '1', previous: '3', reason: 'rollback', actor: 'ada' },
    ]);
    expect(history.production).toMatchObject([{ version: '2', reason: 'manual', actor: 'ada' }]);
    for (const change of history.staging!) expect(Number.isNaN(Date.parse(change.at))).toBe(false);
    // The history is the registry's, not the process's: a new instance on the same folder reads it.
    expect(await new LocalModelRegistry(join(dir, 'history')).aliasHistory(NAME)).toEqual(history);
    expect(await registry.aliasHistory('unknown-model')).toEqual({});
  });

  it('refuses to point an alias at a version that does not exist', async () => {
    const registry = new LocalModelRegistry(join(dir, 'refuse'));
    await registry.register(request('1'.repeat(64)));
    await expect(registry.setAlias(NAME, 'staging', '7', gate)).rejects.toMatchObject({ code: 'REGISTRY_REJECTED', message: `${NAME} has no version 7` });
    await expect(registry.setAlias('other-model', 'staging', '1', gate)).rejects.toMatchObject({ code: 'REGISTRY_REJECTED' });
    expect(await registry.aliasHistory(NAME)).toEqual({});
  });

  it('moves an alias only when it still names the expected holder (compare-and-set), else refuses and records nothing', async () => {
    const registry = new LocalModelRegistry(join(dir, 'cas'));
    for (const sha of ['1', '2', '3']) await registry.register(request(sha.repeat(64)));
    // Expected unset, but someone set it meanwhile.
    await registry.setAlias(NAME, 'staging', '1', { reason: 'manual', actor: 'ada' });
    const before = await registry.aliasHistory(NAME);
    await expect(registry.setAlias(NAME, 'staging', '2', { ...gate, expectedHolder: null })).rejects.toMatchObject({
      code: 'REGISTRY_ERROR',
      message: expect.stringMatching(new RegExp(`^${NAME}@staging moved to v1 meanwhile \\(expected unset\\): `)),
    });
    await expect(registry.setAlias(NAME, 'staging', '2', { ...gate, expectedHolder: '3' })).rejects.toMatchObject({
      code: 'REGISTRY_ERROR',
      message: expect.stringMatching(new RegExp(`^${NAME}@staging moved to v1 meanwhile \\(expected v3\\): `)),
    });
    expect((await registry.getVersionByAlias(NAME, 'staging'))?.version).toBe('1');
    expect(await registry.aliasHistory(NAME)).toEqual(before);
    // The right holder moves it; the target already holding it is a no-op whatever was expected.
    expect(await registry.setAlias(NAME, 'staging', '2', { ...gate, expectedHolder: '1' })).toEqual({ previous: '1', moved: true });
    expect(await registry.setAlias(NAME, 'staging', '2', { ...gate, expectedHolder: '1' })).toEqual({ previous: '2', moved: false });
    expect(await registry.setAlias(NAME, 'production', '3', { ...gate, expectedHolder: null })).toEqual({ moved: true });
    const history = await registry.aliasHistory(NAME);
    expect(history.staging!.map((c) => [c.version, c.previous])).toEqual([['1', undefined], ['2', '1']]);
    expect(history.production!.map((c) => c.version)).toEqual(['3']);
  });

  it('never registers the same model twice, even when two registrations race', async () => {
    const registry = new LocalModelRegistry(join(dir, 'b'));
    const others = [new LocalModelRegistry(join(dir, 'b')), new LocalModelRegistry(join(dir, 'b'))];
    const results = await Promise.all([registry, ...others].map((r) => r.register(request('3'.repeat(64)))));
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(new Set(results.map((r) => r.version.version))).toEqual(new Set(['1']));
    await registry.setAlias(NAME, 'staging', '1', gate);
    const again = await registry.register(request('3'.repeat(64)));
    expect(again).toMatchObject({ created: false, version: { version: '1', aliases: ['staging'] } });
  });

  it('keeps every move when writers in several instances race (the lock serializes them)', async () => {
    const folder = join(dir, 'race');
    const registry = new LocalModelRegistry(folder);
    for (const sha of ['1', '2', '3', '4']) await registry.register(request(sha.repeat(64)));
    const moves = ['1', '2', '3', '4'].map((version) => new LocalModelRegistry(folder).setAlias(NAME, 'staging', version, gate));
    const results = await Promise.all([...moves, new LocalModelRegistry(folder).register(request('5'.repeat(64)))]);
    expect(results.slice(0, 4).every((r) => 'moved' in r && r.moved)).toBe(true);
    const history = (await registry.aliasHistory(NAME)).staging!;
    expect(history.map((c) => c.version).sort()).toEqual(['1', '2', '3', '4']);
    // Each move names the one before it: no two writers read the same holder.
    expect(history.map((c) => c.previous)).toEqual([undefined, ...history.slice(0, -1).map((c) => c.version)]);
    expect((await registry.getVersionByAlias(NAME, 'staging'))?.version).toBe(history.at(-1)!.version);
    expect((await registry.listVersions(NAME)).map((v) => v.version)).toEqual(['1', '2', '3', '4', '5']);
  });
});
