import { describe, expect, it } from 'vitest';
import type { ModelSummary } from './reader.ts';
import { structuralProblems } from './structure.ts';

const model = (nodes: ModelSummary['graph']['nodes'], irVersion = 7, opset = 14): ModelSummary => ({
  irVersion,
  opsets: new Map([['', opset]]),
  producerName: 'test',
  producerVersion: '0',
  metadata: {},
  graph: {
    name: 'g',
    nodes,
    inputs: [{ name: 'x', elemType: 1, shape: ['batch_size', 2] }],
    outputs: [{ name: 'y', elemType: 1, shape: ['batch_size', 2] }],
    initializers: [],
  },
});
const node = (name: string, inputs: string[], outputs: string[]) => ({ opType: 'Relu', name, domain: '', inputs, outputs });

describe('structuralProblems', () => {
  it('accepts a sorted, single-assignment graph', () => {
    expect(structuralProblems(model([node('a', ['x'], ['t']), node('b', ['t'], ['y'])]))).toEqual([]);
  });

  it('finds nodes out of topological order (which onnxruntime would silently accept)', () => {
    expect(structuralProblems(model([node('b', ['t'], ['y']), node('a', ['x'], ['t'])]))).toContain('node b (Relu) reads t before it is defined');
  });

  it('finds a name assigned twice', () => {
    expect(structuralProblems(model([node('a', ['x'], ['y']), node('b', ['x'], ['y'])]))).toContain('y is assigned more than once (output of node b)');
  });

  it('finds an IR version too old for the opset', () => {
    expect(structuralProblems(model([node('a', ['x'], ['y'])], 7, 17))).toEqual(['IR version 7 cannot carry opset 17 (needs IR 8)']);
  });
});
