/**
 * The model directory's own consistency (test/integration/mlflow3.test.ts diffs it against what
 * `mlflow.onnx.log_model` writes): valid YAML with yaml.safe_dump's key order, model_size_bytes
 * summing the files save_model counts, input examples holding the example batch.
 */
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { INPUT_EXAMPLE_FILE, INPUT_EXAMPLE_SHAPE, inputExample, modelDirectoryFiles, SERVING_INPUT_FILE } from './mlmodel.ts';

const info = {
  modelId: 'm-0123456789abcdef0123456789abcdef',
  artifactLocation: 'mlflow-artifacts:/1/models/m-0123456789abcdef0123456789abcdef/artifacts',
  runId: 'a'.repeat(32),
  onnxBytes: 149_376,
  createdAt: new Date('2026-12-02T05:54:37.020Z'),
  metadata: { sha256: 'b'.repeat(64), 'odd: key': 'a "quoted" value' },
};

describe('modelDirectoryFiles', () => {
  const files = modelDirectoryFiles(info);
  const mlmodel = parse(files['MLmodel']!) as Record<string, unknown>;

  it('writes MLmodel as YAML with sorted keys, the ids and times of this model', () => {
    const keys = Object.keys(mlmodel);
    expect(keys).toEqual([...keys].sort());
    expect(mlmodel).toMatchObject({
      artifact_path: info.artifactLocation,
      model_id: info.modelId,
      model_uuid: info.modelId,
      run_id: info.runId,
      metadata: info.metadata,
      utc_time_created: '2026-12-02 05:54:37.020000',
      saved_input_example_info: { artifact_path: INPUT_EXAMPLE_FILE, serving_input_path: SERVING_INPUT_FILE, type: 'ndarray' },
    });
  });

  it('counts model.onnx and both input examples in model_size_bytes, as save_model does', () => {
    const examples = Buffer.byteLength(files[INPUT_EXAMPLE_FILE]!) + Buffer.byteLength(files[SERVING_INPUT_FILE]!);
    expect(mlmodel['model_size_bytes']).toBe(info.onnxBytes + examples);
  });

  it('stores the example batch in both input examples, the serving one indented', () => {
    const flat = (value: unknown): number[] => (Array.isArray(value) ? value.flatMap(flat) : [value as number]);
    const example = JSON.parse(files[INPUT_EXAMPLE_FILE]!) as { mel_spectrogram: unknown };
    const serving = JSON.parse(files[SERVING_INPUT_FILE]!) as { inputs: { mel_spectrogram: unknown } };
    expect(flat(example.mel_spectrogram)).toEqual([...inputExample()]);
    expect(serving.inputs.mel_spectrogram).toEqual(example.mel_spectrogram);
    let level: unknown = example.mel_spectrogram;
    for (const size of INPUT_EXAMPLE_SHAPE) {
      expect(level).toHaveLength(size);
      level = (level as unknown[])[0];
    }
    expect(files[INPUT_EXAMPLE_FILE]).not.toContain('\n');
    expect(files[SERVING_INPUT_FILE]!.split('\n').length).toBeGreaterThan(inputExample().length);
  });
});
