import { EXTERNAL_DATA_SHA256, HEIMDALL_PRODUCER } from './model.ts';
import type { ModelSummary } from './reader.ts';

/** The IR version each opset shipped with (onnx/helper.py VERSION_TABLE); a model must declare at least that IR. */
const MIN_IR_FOR_OPSET: ReadonlyArray<readonly [opset: number, ir: number]> = [
  [7, 3], [8, 3], [9, 4], [10, 5], [11, 6], [12, 7], [13, 7], [14, 7], [15, 8], [16, 8], [17, 8], [18, 8], [19, 9], [20, 9], [21, 10], [22, 10], [23, 11],
];

/**
 * Structural rules of the ONNX spec that onnxruntime does not enforce (it sorts graphs itself):
 * topological order, single assignment, every input defined, IR version able to carry the opset;
 * and, for the models our exporter writes, its own promise of a canonical graph (weightLayoutProblems).
 * Returns the problems found; empty means sound.
 */
export function structuralProblems(model: ModelSummary): string[] {
  const problems: string[] = [];
  const opset = model.opsets.get('') ?? model.opsets.get('ai.onnx');
  if (opset === undefined) problems.push('no default-domain opset import');
  else {
    const needed = MIN_IR_FOR_OPSET.find(([o]) => o === opset)?.[1];
    if (needed === undefined) problems.push(`opset ${opset} is not supported`);
    else if (model.irVersion < needed) problems.push(`IR version ${model.irVersion} cannot carry opset ${opset} (needs IR ${needed})`);
  }
  const defined = new Set<string>();
  const define = (name: string, what: string) => {
    if (defined.has(name)) problems.push(`${name} is assigned more than once (${what})`);
    defined.add(name);
  };
  for (const input of model.graph.inputs) define(input.name, 'graph input');
  for (const init of model.graph.initializers) if (!model.graph.inputs.some((i) => i.name === init.name)) define(init.name, 'initializer');
  for (const node of model.graph.nodes) {
    for (const input of node.inputs) {
      if (input !== '' && !defined.has(input)) problems.push(`node ${node.name} (${node.opType}) reads ${input} before it is defined`);
    }
    for (const output of node.outputs) define(output, `output of node ${node.name}`);
  }
  for (const output of model.graph.outputs) if (!defined.has(output.name)) problems.push(`graph output ${output.name} is never produced`);
  if (model.producerName === HEIMDALL_PRODUCER) problems.push(...weightLayoutProblems(model));
  return problems;
}

/** Nodes that only copy, reorder or convert their input: on a weight, the weight was not stored as its reader reads it. */
const LAYOUT_OPS = new Set(['Transpose', 'Identity', 'Cast']);

/**
 * DESIGN §4, canonical graph: every initializer is stored in the layout its consumer reads, so no
 * Transpose, Identity or Cast node reads one. The ecosystem's tools look for a weight as a node's
 * direct input (onnxruntime's quantize_dynamic quantizes a MatMul only when its weight is an
 * initializer), and a runtime otherwise redoes the folding at every session creation. Not a rule of
 * the spec: torch.onnx.export itself puts Identity nodes on weights it finds equal, so other
 * producers' models are not judged by it (structuralProblems applies it to ours).
 */
export function weightLayoutProblems(model: ModelSummary): string[] {
  const initializers = new Set(model.graph.initializers.map((i) => i.name));
  return model.graph.nodes
    .filter((node) => LAYOUT_OPS.has(node.opType) && (node.domain === '' || node.domain === 'ai.onnx'))
    .flatMap((node) =>
      node.inputs.filter((input) => initializers.has(input)).map((input) => `node ${node.name} (${node.opType}) reads initializer ${input}: store it in the layout its consumer reads`),
    );
}

/** The external data file stored beside a model: its name there, its size and the sha256 the store keeps for it. */
export interface ExternalDataFile {
  readonly name: string;
  readonly bytes: number;
  readonly sha256?: string;
}

/**
 * The rules for a model whose weights live in an external file. onnxruntime opens each `location`
 * relative to the model's folder, so a model from the bucket could otherwise name any file there or
 * above it: every external initializer must name the one file stored beside the model
 * (`expectedName`, `<model>.data`), lie within it, and the model must name the file's sha256
 * (EXTERNAL_DATA_SHA256), which the stored file must have: the model's own digest then stands for its
 * weights too. Returns the problems found (the first offender of each kind, with a count); none for
 * a model with every weight inline.
 */
export function externalDataProblems(model: ModelSummary, expectedName: string, data: ExternalDataFile | undefined): string[] {
  const external = model.graph.initializers.filter((i) => i.external);
  if (external.length === 0) return [];
  const problems: string[] = [];
  const report = (offenders: readonly string[]) => {
    if (offenders.length > 0) problems.push(offenders.length === 1 ? offenders[0]! : `${offenders[0]} (and ${offenders.length - 1} more initializers alike)`);
  };
  report(external.filter((i) => i.location !== expectedName).map((i) => `initializer ${i.name} names external file ${JSON.stringify(i.location ?? '')}, not ${expectedName} beside the model`));
  if (!data) {
    problems.push(`${external.length} initializers live in ${expectedName}, which is not stored beside the model`);
    return problems;
  }
  report(
    external
      .filter((i) => (i.offset ?? 0) + i.byteLength > data.bytes)
      .map((i) => `initializer ${i.name} spans bytes ${i.offset ?? 0}..${(i.offset ?? 0) + i.byteLength} of ${data.name}, which holds ${data.bytes}`),
  );
  const named = model.metadata[EXTERNAL_DATA_SHA256];
  if (named === undefined) problems.push(`the model names no ${EXTERNAL_DATA_SHA256} for ${data.name}: its digest would not cover its weights`);
  else if (data.sha256 !== undefined && data.sha256 !== named) problems.push(`${data.name} has sha256 ${data.sha256}, the model names ${named}: they are not one model`);
  return problems;
}
