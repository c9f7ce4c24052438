import { TensorDataType, type AttributeValue, type Dim, type GraphDef, type InitializerDef, type NodeDef, type ValueInfo } from './model.ts';

/**
 * Builds a graph node by node. Every node input must already exist (graph input, initializer or an
 * earlier node's output) and every name is assigned once, so the node list is topologically sorted
 * and in single-assignment form by construction.
 */
export class GraphBuilder {
  private readonly nodes: NodeDef[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly initializers: InitializerDef[] = [];
  private readonly defined = new Set<string>();
  private readonly opCounts = new Map<string, number>();

  constructor(private readonly name: string) {}

  input(name: string, elemType: TensorDataType, shape: readonly Dim[]): string {
    this.define(name);
    this.inputs.push({ name, elemType, shape });
    return name;
  }

  initializer(init: InitializerDef): string {
    this.define(init.name);
    this.initializers.push(init);
    return init.name;
  }

  /** A small float32 tensor held in memory (constants such as epsilons and exponents). */
  constant(name: string, values: readonly number[], dims: readonly number[] = []): string {
    const bytes = new Uint8Array(new Float32Array(values).buffer);
    return this.initializer({ name, dataType: TensorDataType.FLOAT, dims, byteLength: bytes.byteLength, data: async () => bytes });
  }

  /** Adds a node and returns its (first) output's name. `scope` names it after the module it comes from. */
  node(opType: string, inputs: readonly string[], options: { scope?: string; attributes?: Record<string, AttributeValue>; outputs?: number } = {}): string {
    return this.nodeOutputs(opType, inputs, options)[0]!;
  }

  nodeOutputs(opType: string, inputs: readonly string[], options: { scope?: string; attributes?: Record<string, AttributeValue>; outputs?: number } = {}): string[] {
    for (const input of inputs) {
      if (input !== '' && !this.defined.has(input)) throw new Error(`node ${opType} uses ${input} before it is defined`);
    }
    const count = (this.opCounts.get(opType) ?? 0) + 1;
    this.opCounts.set(opType, count);
    const name = `${options.scope ? `${options.scope}/` : ''}${opType}_${count}`;
    const outputs = Array.from({ length: options.outputs ?? 1 }, (_, i) => `${name}_output_${i}`);
    outputs.forEach((o) => this.define(o));
    this.nodes.push({ opType, name, inputs, outputs, attributes: options.attributes ?? {} });
    return outputs;
  }

  /** Renames the value `from` (the last node's output) to a graph output. */
  output(from: string, name: string, elemType: TensorDataType, shape: readonly Dim[]): void {
    const producer = this.nodes.find((n) => n.outputs.includes(from));
    if (!producer) throw new Error(`output ${name}: ${from} is not produced by a node`);
    // Re-point the producer and later consumers at the public name, keeping single assignment.
    const rename = (list: readonly string[]) => list.map((v) => (v === from ? name : v));
    for (let i = 0; i < this.nodes.length; i++) {
      const node = this.nodes[i]!;
      this.nodes[i] = { ...node, inputs: rename(node.inputs), outputs: rename(node.outputs) };
    }
    this.define(name);
    this.outputs.push({ name, elemType, shape });
  }

  build(): GraphDef {
    return { name: this.name, nodes: this.nodes, inputs: this.inputs, outputs: this.outputs, initializers: this.initializers };
  }

  private define(name: string): void {
    if (this.defined.has(name)) throw new Error(`${name} is assigned twice`);
    this.defined.add(name);
  }
}
