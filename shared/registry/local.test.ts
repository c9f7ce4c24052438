import { writeFile } from 'node:fs/promises';
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

const request = (sha256: string, overrides: Partial<RegistrationRequest> = {}): RegistrationRequest => ({
  name: 'heimdall-localization',
  alias: 'staging',
  sha256,
  pipelineRunId: sha256.slice(0, 16),
  modelPath: join(dir, 'model.onnx'),
  modelUri: `file:///models/${sha256}.onnx`,
  tags: { latency_p50_batch1_ms: '12.5' },
  params: { variant: 'tiny' },
  metrics: { parity_max_abs_positions: 1e-7 },
  report: { ok: true },
  ...overrides,
});

describe('LocalModelRegistry', () => {
  it('numbers versions, moves the alias to the newest and finds versions by sha256', async () => {
    const registry = new LocalModelRegistry(join(dir, 'a'));
    const first = await registry.register(request('1'.repeat(64)));
    const second = await registry.register(request('2'.repeat(64)));
    expect([first.version.version, second.version.version]).toEqual(['1', '2']);
    expect((await registry.getVersionByAlias('heimdall-localization', 'staging'))?.version).toBe('2');
    expect((await registry.findVersionBySha256('heimdall-localization', '1'.repeat(64)))?.aliases).toEqual([]);
    expect(registry.modelUri(second.version)).toBe('models:/heimdall-localization/2');
  });

  it('never registers the same model twice, even when two registrations race', async () => {
    const registry = new LocalModelRegistry(join(dir, 'b'));
    const others = [new LocalModelRegistry(join(dir, 'b')), new LocalModelRegistry(join(dir, 'b'))];
    const results = await Promise.all([registry, ...others].map((r) => r.register(request('3'.repeat(64)))));
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(new Set(results.map((r) => r.version.version))).toEqual(new Set(['1']));
    const again = await registry.register(request('3'.repeat(64), { alias: 'production' }));
    expect(again).toMatchObject({ created: false, version: { version: '1', aliases: ['staging'] } });
  });
});
