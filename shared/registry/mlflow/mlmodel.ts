/**
 * The files of an MLflow model directory for our ONNX model, written without Python: what
 * `mlflow.onnx.log_model(model, name, signature=..., input_example=..., metadata=...,
 * save_as_external_data=False)` writes with MLflow 3.17 (mlflow/onnx/__init__.py save_model,
 * mlflow/models/model.py Model.log and to_dict, mlflow/models/utils.py _Example), field for field,
 * so that `mlflow.onnx.load_model`, `mlflow.pyfunc.load_model` and `mlflow models serve` treat it
 * as one of their own. test/integration/mlflow3.test.ts diffs it against log_model's output.
 * YAML is written by hand, keys sorted as yaml.safe_dump sorts them: every value is a fixed key,
 * a number, or a JSON string (valid YAML).
 */

/** The file name of the model inside the model directory. */
export const ONNX_FILE = 'model.onnx';
export const INPUT_EXAMPLE_FILE = 'input_example.json';
export const SERVING_INPUT_FILE = 'serving_input_example.json';

/**
 * What the inference service runs the model with: Python and the packages log_model pins from the
 * process that logs (requirements.txt, conda.yaml, python_env.yaml). We log without Python, so we
 * pin the serving image's versions, which are the test venv's (test/support/services/setup.sh:
 * mlflow, onnx and onnxruntime pinned there, onnxruntime at onnxruntime-node's version so both run
 * the same kernels; numpy as pip resolved it; pip and setuptools as Python 3.11.7's venv ships
 * them). The MLflow 3 test fails when these drift from what log_model writes in that venv.
 */
export const SERVING_ENVIRONMENT = {
  python: '3.11.7',
  pip: '23.2.1',
  setuptools: '65.5.0',
  mlflow: '3.17.2',
  numpy: '2.4.6',
  onnx: '1.23.2',
  onnxruntime: '1.30.0',
} as const;

const REQUIREMENTS = (['mlflow', 'numpy', 'onnx', 'onnxruntime'] as const).map((name) => `${name}==${SERVING_ENVIRONMENT[name]}`);

/** MLflow's tensor signature of LocalizationNet (DESIGN §4): batch dimension -1. */
const SIGNATURE = {
  inputs: [{ type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 3, 128, 32] }, name: 'mel_spectrogram' }],
  outputs: [
    { type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 2] }, name: 'positions' },
    { type: 'tensor', 'tensor-spec': { dtype: 'float32', shape: [-1, 2] }, name: 'uncertainties' },
  ],
};

export const INPUT_EXAMPLE_SHAPE: readonly number[] = [1, 3, 128, 32];

/**
 * The input example: one deterministic mel-spectrogram batch. Its values are multiples of 0.25 in
 * [-1, 1], so the JSON MLflow stores stays small and prints the same in Python and here.
 */
export function inputExample(): Float32Array {
  const size = INPUT_EXAMPLE_SHAPE.reduce<number>((a, b) => a * b, 1);
  return new Float32Array(size).map((_, i) => (((i * 7) % 9) - 4) / 4);
}

export interface ModelDirectoryInfo {
  /** The LoggedModel's id (`m-...`): MLflow writes it as model_id and model_uuid. */
  readonly modelId: string;
  /** The LoggedModel's artifact location, as MLflow writes it in artifact_path. */
  readonly artifactLocation: string;
  /** The LoggedModel's source run. */
  readonly runId: string;
  /** Size of model.onnx and its external data file: part of model_size_bytes. */
  readonly onnxBytes: number;
  readonly createdAt: Date;
  /** Free-form `metadata` of the MLmodel file (sha256, pipeline run id...). */
  readonly metadata: Readonly<Record<string, string>>;
}

/** File name -> content of every file beside model.onnx (MLmodel is the one to upload last). */
export function modelDirectoryFiles(info: ModelDirectoryInfo): Record<string, string> {
  const example = nestedList(inputExample(), INPUT_EXAMPLE_SHAPE);
  const inputExampleJson = pythonJson({ mel_spectrogram: example });
  const servingInputJson = pythonJson({ inputs: { mel_spectrogram: example } }, 2);
  // save_model sums the directory's files before it writes MLmodel and the environment files.
  const modelSizeBytes = info.onnxBytes + Buffer.byteLength(inputExampleJson) + Buffer.byteLength(servingInputJson);
  const q = (value: string) => JSON.stringify(value);
  const env = SERVING_ENVIRONMENT;
  const mlmodel = [
    `artifact_path: ${q(info.artifactLocation)}`,
    'flavors:',
    '  onnx:',
    '    code: null',
    `    data: ${ONNX_FILE}`,
    '    onnx_session_options: null',
    `    onnx_version: ${q(env.onnx)}`,
    '    providers:',
    '    - CUDAExecutionProvider',
    '    - CPUExecutionProvider',
    '  python_function:',
    `    data: ${ONNX_FILE}`,
    '    env:',
    '      conda: conda.yaml',
    '      virtualenv: python_env.yaml',
    '    loader_module: mlflow.onnx',
    `    python_version: ${q(env.python)}`,
    'is_signature_from_type_hint: false',
    'metadata:',
    ...Object.entries(info.metadata).map(([key, value]) => `  ${q(key)}: ${q(value)}`),
    `mlflow_version: ${q(env.mlflow)}`,
    `model_id: ${q(info.modelId)}`,
    `model_size_bytes: ${modelSizeBytes}`,
    `model_uuid: ${q(info.modelId)}`,
    'prompts: null',
    `run_id: ${q(info.runId)}`,
    'saved_input_example_info:',
    `  artifact_path: ${INPUT_EXAMPLE_FILE}`,
    `  serving_input_path: ${SERVING_INPUT_FILE}`,
    '  type: ndarray',
    'signature:',
    `  inputs: ${q(JSON.stringify(SIGNATURE.inputs))}`,
    `  outputs: ${q(JSON.stringify(SIGNATURE.outputs))}`,
    '  params: null',
    'type_hint_from_example: false',
    // MLflow's own format: 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
    `utc_time_created: ${q(info.createdAt.toISOString().replace('T', ' ').replace('Z', '000'))}`,
  ];
  // The environment files byte for byte as MLflow writes them (requirements.txt without a final newline).
  return {
    [INPUT_EXAMPLE_FILE]: inputExampleJson,
    [SERVING_INPUT_FILE]: servingInputJson,
    'requirements.txt': REQUIREMENTS.join('\n'),
    'python_env.yaml': lines([`python: ${env.python}`, 'build_dependencies:', `- pip==${env.pip}`, `- setuptools==${env.setuptools}`, '- wheel', 'dependencies:', '- -r requirements.txt']),
    'conda.yaml': lines(['channels:', '- conda-forge', 'dependencies:', `- python=${env.python}`, `- pip<=${env.pip}`, '- pip:', ...REQUIREMENTS.map((r) => `  - ${r}`), 'name: mlflow-env']),
    MLmodel: lines(mlmodel),
  };
}

const lines = (items: readonly string[]) => `${items.join('\n')}\n`;

type Nested = number | Nested[];

function nestedList(values: Float32Array, shape: readonly number[]): Nested[] {
  const [size, ...rest] = shape;
  const stride = rest.reduce((a, b) => a * b, 1);
  return Array.from({ length: size! }, (_, i) => (rest.length === 0 ? values[i]! : nestedList(values.subarray(i * stride, (i + 1) * stride), rest)));
}

/**
 * Python's `json.dumps` of lists, string-keyed objects and floats (', ' and ': ' separators; with
 * `indent`, one item per line), as MLflow writes its input examples. Floats print as Python's repr
 * does for the example's values (an integral value keeps its `.0`).
 */
function pythonJson(value: Nested | { readonly [key: string]: unknown }, indent?: number, depth = 0): string {
  const pad = (level: number) => (indent === undefined ? '' : `\n${' '.repeat(indent * level)}`);
  const join = (items: string[], open: string, close: string) =>
    items.length === 0 ? `${open}${close}` : `${open}${pad(depth + 1)}${items.join(indent === undefined ? ', ' : `,${pad(depth + 1)}`)}${pad(depth)}${close}`;
  if (typeof value === 'number') return Number.isInteger(value) ? value.toFixed(1) : String(value);
  if (Array.isArray(value)) return join(value.map((item) => pythonJson(item, indent, depth + 1)), '[', ']');
  return join(Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${pythonJson(item as Nested, indent, depth + 1)}`), '{', '}');
}
