import { HEIMDALL_PRODUCER } from './model.ts';
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
