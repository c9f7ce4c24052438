/**
 * The files of an MLflow model directory for our ONNX model, written without Python: what
 * `mlflow.onnx.save_model(model, path, signature=...)` writes, so that `mlflow.onnx.load_model` and
 * `mlflow.pyfunc.load_model` load it. The layout and keys follow MLflow's own output (MLflow
 * 3.17: `flavors.onnx` {code, data, providers}, `flavors.python_function` {loader_module
 * mlflow.onnx, data, env, python_version}, `signature` with tensor specs as JSON strings); fields
 * that only describe the saving Python process (onnx_version, mlflow_version) are left out.
 * YAML is written by hand: every value is a fixed key, a number, or a JSON string (valid YAML).
 */
import { randomUUID } from 'node:crypto';

/** The file name of the model inside the model directory. */
export const ONNX_FILE = 'model.onnx';

/**
 * The Python the inference service runs the model with (written to the env files; MLflow warns when
 * the loading interpreter's major.minor differs).
 */
const PYTHON_VERSION = '3.11';

/**
 * What loading needs: model aliases (`models:/name@alias`) from MLflow 2.9 on, opset 20 from
 * onnxruntime 1.17 on.
 */
const REQUIREMENTS = ['mlflow>=2.9', 'onnx>=1.15', 'onnxruntime>=1.17'];

/** MLflow's tensor signature of LocalizationNet (DESIGN §4): batch dimension -1. */
const SIGNATURE = {
  inputs: [{ name: 'mel_spectrogram', type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 3, 128, 32] } }],
  outputs: [
    { name: 'positions', type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 2] } },
    { name: 'uncertainties', type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 2] } },
  ],
};

export interface ModelDirectoryInfo {
  /** The MLflow run the model is logged under. */
  readonly runId: string;
  readonly createdAt: Date;
  /** Free-form `metadata` of the MLmodel file (sha256, pipeline run id...). */
  readonly metadata: Readonly<Record<string, string>>;
}

/** File name -> content of every file beside model.onnx. */
export function modelDirectoryFiles(info: ModelDirectoryInfo): Record<string, string> {
  const q = (value: string) => JSON.stringify(value);
  const mlmodel = [
    'artifact_path: model',
    'flavors:',
    '  onnx:',
    '    code: null',
    `    data: ${ONNX_FILE}`,
    '    providers:',
    '    - CUDAExecutionProvider',
    '    - CPUExecutionProvider',
    '  python_function:',
    `    data: ${ONNX_FILE}`,
    '    env:',
    '      conda: conda.yaml',
    '      virtualenv: python_env.yaml',
    '    loader_module: mlflow.onnx',
    `    python_version: ${q(PYTHON_VERSION)}`,
    'metadata:',
    ...Object.entries(info.metadata).map(([key, value]) => `  ${q(key)}: ${q(value)}`),
    `model_uuid: ${q(randomUUID().replaceAll('-', ''))}`,
    `run_id: ${q(info.runId)}`,
    'signature:',
    `  inputs: ${q(JSON.stringify(SIGNATURE.inputs))}`,
    `  outputs: ${q(JSON.stringify(SIGNATURE.outputs))}`,
    '  params: null',
    // MLflow's own format: 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
    `utc_time_created: ${q(info.createdAt.toISOString().replace('T', ' ').replace('Z', '000'))}`,
  ];
  return {
    MLmodel: lines(mlmodel),
    'requirements.txt': lines(REQUIREMENTS),
    'python_env.yaml': lines([`python: ${q(PYTHON_VERSION)}`, 'build_dependencies:', '- pip', '- setuptools', '- wheel', 'dependencies:', '- -r requirements.txt']),
    'conda.yaml': lines(['name: mlflow-env', 'channels:', '- conda-forge', 'dependencies:', `- python=${PYTHON_VERSION}`, '- pip', '- pip:', ...REQUIREMENTS.map((r) => `  - ${q(r)}`)]),
  };
}

const lines = (items: readonly string[]) => `${items.join('\n')}\n`;
