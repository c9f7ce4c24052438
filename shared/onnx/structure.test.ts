import { describe, expect, it } from 'vitest';
import type { ModelSummary } from './reader.ts';
import { externalDataProblems, structuralProblems, weightLayoutProblems } from './structure.ts';

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

describe('weightLayoutProblems', () => {
  /** x @ w, with `w` an initializer [2, 2] that `layoutOp` (when given) reads first. */
  const matMul = (producerName: string, layoutOp?: string): ModelSummary => {
    const base = model(
      layoutOp
        ? [{ opType: layoutOp, name: 'w_layout', domain: '', inputs: ['w'], outputs: ['w2'] }, { opType: 'MatMul', name: 'mm', domain: '', inputs: ['x', 'w2'], outputs: ['y'] }]
        : [{ opType: 'MatMul', name: 'mm', domain: '', inputs: ['x', 'w'], outputs: ['y'] }],
    );
    return { ...base, producerName, graph: { ...base.graph, initializers: [{ name: 'w', dataType: 1, dims: [2, 2], byteLength: 16, external: false }] } };
  };

  it('accepts a weight read directly by its consumer', () => {
    expect(weightLayoutProblems(matMul('heimdall-exporter'))).toEqual([]);
    expect(structuralProblems(matMul('heimdall-exporter'))).toEqual([]);
  });

  for (const op of ['Transpose', 'Identity', 'Cast']) {
    it(`finds a ${op} reading a weight, and refuses it in our exporter's models`, () => {
      const problem = `node w_layout (${op}) reads initializer w: store it in the layout its consumer reads`;
      expect(weightLayoutProblems(matMul('heimdall-exporter', op))).toEqual([problem]);
      expect(structuralProblems(matMul('heimdall-exporter', op))).toEqual([problem]);
    });
  }

  it("leaves other producers' models to the spec's rules (torch.onnx.export puts Identity on weights it finds equal)", () => {
    expect(weightLayoutProblems(matMul('pytorch', 'Identity'))).toHaveLength(1);
    expect(structuralProblems(matMul('pytorch', 'Identity'))).toEqual([]);
  });

  it('does not mind a Transpose of an activation (ConvNeXt blocks permute NCHW <-> NHWC)', () => {
    const permuted = model([node('p', ['x'], ['t']), { opType: 'Transpose', name: 'nhwc', domain: '', inputs: ['t'], outputs: ['y'] }]);
    expect(structuralProblems({ ...permuted, producerName: 'heimdall-exporter' })).toEqual([]);
  });
});

describe('externalDataProblems', () => {
  const digest = 'ab'.repeat(32);
  /** Two weights of 16 bytes in `model.onnx.data` at offsets 0 and 4096, as our writer places them. */
  const external = (changes: { location?: string; offset?: number; metadata?: Record<string, string> } = {}): ModelSummary => {
    const base = model([]);
    const init = (name: string, offset: number) => ({ name, dataType: 1, dims: [2, 2], byteLength: 16, external: true, location: 'model.onnx.data', offset });
    return {
      ...base,
      metadata: changes.metadata ?? { external_data_sha256: digest },
      graph: { ...base.graph, initializers: [init('w1', 0), { ...init('w2', changes.offset ?? 4096), ...(changes.location !== undefined ? { location: changes.location } : {}) }] },
    };
  };
  const data = { name: 'model.onnx.data', bytes: 4112, sha256: digest };

  it('accepts weights within the file beside the model whose digest the model names', () => {
    expect(externalDataProblems(external(), 'model.onnx.data', data)).toEqual([]);
  });

  it('has nothing to say of a model with every weight inline', () => {
    expect(externalDataProblems(model([]), 'model.onnx.data', undefined)).toEqual([]);
  });

  for (const location of ['../other-run/model.onnx.data', '/etc/passwd', 'weights.bin', '']) {
    it(`refuses a weight that names ${JSON.stringify(location)} instead of the file beside the model`, () => {
      expect(externalDataProblems(external({ location }), 'model.onnx.data', data)).toEqual([`initializer w2 names external file ${JSON.stringify(location)}, not model.onnx.data beside the model`]);
    });
  }

  it('refuses weights whose file is not stored, or that run past its end', () => {
    expect(externalDataProblems(external(), 'model.onnx.data', undefined)).toEqual(['2 initializers live in model.onnx.data, which is not stored beside the model']);
    expect(externalDataProblems(external({ offset: 8192 }), 'model.onnx.data', data)).toEqual(['initializer w2 spans bytes 8192..8208 of model.onnx.data, which holds 4112']);
  });

  it('refuses a data file that is not the one the model names, and a model that names none', () => {
    expect(externalDataProblems(external(), 'model.onnx.data', { ...data, sha256: 'cd'.repeat(32) })).toEqual([`model.onnx.data has sha256 ${'cd'.repeat(32)}, the model names ${digest}: they are not one model`]);
    expect(externalDataProblems(external({ metadata: {} }), 'model.onnx.data', data)).toEqual(['the model names no external_data_sha256 for model.onnx.data: its digest would not cover its weights']);
  });

  it('names the first offender of a kind and counts the rest', () => {
    const many = external();
    const offenders = { ...many, graph: { ...many.graph, initializers: many.graph.initializers.map((i) => ({ ...i, location: 'elsewhere' })) } };
    expect(externalDataProblems(offenders, 'model.onnx.data', data)).toEqual(['initializer w1 names external file "elsewhere", not model.onnx.data beside the model (and 1 more initializers alike)']);
  });
});
