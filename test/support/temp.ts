import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';

const made = new Set<string>();
// Registered when a test file imports this module, at collection: an afterAll registered from
// inside a running hook (tempDir called in beforeAll) is not run by vitest, and the dir would stay.
afterAll(() => Promise.all([...made].map((dir) => rm(dir, { recursive: true, force: true }))));

/** A temporary directory removed after the file's tests. */
export async function tempDir(prefix = 'heimdall-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  made.add(dir);
  return dir;
}
