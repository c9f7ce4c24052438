import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/support/temp.ts';
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
