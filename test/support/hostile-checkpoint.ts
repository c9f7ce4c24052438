import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A torch checkpoint whose pickle calls `os.system` when torch.load runs it (test/fixtures/bad_checkpoints.py,
 * standard-library Python): Heimdall must refuse it at export with UNSAFE_PICKLE.
 */
export async function writeHostileCheckpoint(dir: string): Promise<string> {
  const out = join(dir, 'hostile');
  await promisify(execFile)('python3', [join(import.meta.dirname, '../fixtures/bad_checkpoints.py'), out, join(out, 'MARKER')]);
  return join(out, 'os_system.pt');
}
