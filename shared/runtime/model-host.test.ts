/**
 * onnxruntime sessions in processes of their own: runs served from there, a refused model as
 * INVALID_MODEL and a dead process as IO_ERROR, a stop that ends the process, and one session per
 * model and options for every stage of a run that shares them (withSharedModels), ended with it.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { exportCheckpoint } from '../models/localization-net/export.ts';
import { writeSmallCheckpoint } from '../../test/support/small-model.ts';
import { tempDir } from '../../test/support/temp.ts';
import { runBenchmark } from './benchmark.ts';
import { openModel, withSharedModels, type BatchTimed } from './model-host.ts';
import { sampleInput } from './sample-input.ts';
import { sha256File } from './sha256.ts';

let model: string;
let sha256: string;
const feeds = (batch: number) => ({ mel_spectrogram: { data: sampleInput(batch), dims: [batch, 3, 128, 32] } });
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** This process's child processes, over all its threads. */
const children = () => readdirSync(`/proc/${process.pid}/task`).flatMap((tid) => readFileSync(`/proc/${process.pid}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean));

beforeAll(async () => {
  const dir = await tempDir('heimdall-model-host-');
  await writeSmallCheckpoint(join(dir, 'small.pth'));
  model = join(dir, 'small.onnx');
  await exportCheckpoint(join(dir, 'small.pth'), model);
  sha256 = await sha256File(model);
});

describe('openModel', () => {
  it('runs the model in a child process, with glibc told to give freed memory back, and ends it on close', async () => {
    const hosted = await openModel(model, { threads: 1 });
    expect(hosted.pid).not.toBe(process.pid);
    expect(readFileSync(`/proc/${hosted.pid}/environ`, 'utf8').split('\0')).toContain('MALLOC_MMAP_THRESHOLD_=131072');
    expect([hosted.provider, hosted.threads]).toEqual(['cpu', 1]);
    expect(hosted.createMs).toBeGreaterThan(0);
    const outputs = await hosted.run(feeds(3));
    expect(outputs.positions).toMatchObject({ type: 'float32', dims: [3, 2] });
    expect(outputs.positions!.data).toBeInstanceOf(Float32Array);
    expect(outputs.uncertainties!.dims).toEqual([3, 2]);
    // onnxruntime's own refusal of the inputs is the caller's to name.
    await expect(hosted.run({ mel_spectrogram: { data: new Float32Array(10), dims: [1, 10] } })).rejects.toThrow(/invalid|dimension|rank/i);
    await hosted.close();
    expect(alive(hosted.pid)).toBe(false);
  });

  it('refuses a model onnxruntime will not load as INVALID_MODEL, leaving no process behind', async () => {
    const junk = join(await tempDir('heimdall-model-host-'), 'junk.onnx');
    await writeFile(junk, 'not a model');
    const before = children();
    await expect(openModel(junk)).rejects.toMatchObject({ code: 'INVALID_MODEL', message: expect.stringContaining('onnxruntime cannot load') });
    expect(children()).toEqual(before);
  });

  it('times companions in the same rounds as the model, and leaves out one that does not load, with its warning', async () => {
    const junk = join(dirname(model), 'junk-companion.onnx');
    await writeFile(junk, 'not a model');
    const hosted = await openModel(model, { threads: 1 });
    const timed: BatchTimed[] = [];
    const warnings = await hosted.time({ batches: [1, 2], warmup: 1, budgetMs: 10, minRuns: 3, companions: [{ path: model, unloadable: 'the same model does not load' }, { path: junk, unloadable: 'junk does not load' }] }, (t) => timed.push(t));
    await hosted.close();
    expect(timed.map((t) => t.batch)).toEqual([1, 2]);
    for (const t of timed) {
      expect(t.companions).toHaveLength(2);
      // Every loaded model runs once per round: the series pair up.
      expect(t.companions[0]).toHaveLength(t.candidate.length);
      expect(t.companions[1]).toBeNull();
    }
    expect(warnings).toEqual([expect.stringMatching(/^junk does not load \(/)]);
  });

  it('rejects with IO_ERROR once its process is gone, and with the reason when stopped', async () => {
    const hosted = await openModel(model, { threads: 1 });
    process.kill(hosted.pid, 'SIGKILL');
    await expect(hosted.run(feeds(1))).rejects.toMatchObject({ code: 'IO_ERROR', message: expect.stringContaining('SIGKILL') });
    await hosted.close();

    const controller = new AbortController();
    const stopped = await openModel(model, { threads: 1 }, { signal: controller.signal });
    const timing = stopped.time({ batches: [1], warmup: 1, budgetMs: 60_000, minRuns: 3 }, () => undefined);
    setTimeout(() => controller.abort(new Error('stop')), 200);
    await expect(timing).rejects.toThrow('stop');
    await stopped.close();
    expect(alive(stopped.pid)).toBe(false);
  });
});

describe('withSharedModels', () => {
  it('opens a model once for every stage of the run that asks with its sha256 and the same options, and ends it with the run', async () => {
    let pid = 0;
    await withSharedModels(async () => {
      const validate = await openModel(model, { threads: 1 }, { sha256 });
      pid = validate.pid;
      await validate.close();
      expect(alive(pid)).toBe(true);
      const parity = await openModel(model, { threads: 1 }, { sha256 });
      expect(parity.pid).toBe(pid);
      expect(parity.createMs).toBe(validate.createMs);
      // The benchmark times the same session; the figure of its creation is that one's.
      const benchmark = await runBenchmark({ modelPath: model, modelSha256: sha256, provider: 'cpu', threads: 1, batches: [2], warmup: 1, budgetMs: 20, minRuns: 3 });
      expect(benchmark.sessionCreateMs).toBe(validate.createMs);
      expect(benchmark.measurementMs).toBeGreaterThanOrEqual(20);
      // Other options, or no sha256: a session of its own.
      const other = await openModel(model, { threads: 2 }, { sha256 });
      const unnamed = await openModel(model, { threads: 1 });
      expect(new Set([pid, other.pid, unnamed.pid]).size).toBe(3);
      await unnamed.close();
      expect(alive(unnamed.pid)).toBe(false);
    });
    expect(alive(pid)).toBe(false);
  });
});
