import { describe, expect, it } from 'vitest';
import { OpaqueObject, unpickle, type UnpicklerOptions } from './unpickler.ts';

const noGlobals: UnpicklerOptions = {
  resolveGlobal: (module, name) => new OpaqueObject(`${module}.${name}`, []),
  persistentLoad: () => null,
};
const bytes = (...parts: Array<number | string>) =>
  Uint8Array.from(parts.flatMap((p) => (typeof p === 'number' ? [p] : [...new TextEncoder().encode(p)])));

describe('unpickle', () => {
  it('reads protocol-2 containers, numbers and strings', () => {
    // pickle.dumps({'a': [1, 2.5, None, True], 'b': (-3,)}, protocol=2)
    const data = bytes(0x80, 2, 0x7d, 0x71, 0, 0x28, 0x58, 1, 0, 0, 0, 'a', 0x5d, 0x28, 0x4b, 1, 0x47, 0x40, 0x04, 0, 0, 0, 0, 0, 0, 0x4e, 0x88, 0x65, 0x58, 1, 0, 0, 0, 'b', 0x4a, 0xfd, 0xff, 0xff, 0xff, 0x85, 0x75, 0x2e);
    expect(unpickle(data, noGlobals)).toEqual(new Map<unknown, unknown>([['a', [1, 2.5, null, true]], ['b', [-3]]]));
  });

  it('refuses opcodes that call code without a global check (INST, OBJ)', () => {
    expect(() => unpickle(bytes(0x80, 2, 'i', 'os\nsystem\n', 0x2e), noGlobals)).toThrowError(expect.objectContaining({ code: 'UNSAFE_PICKLE' }));
    expect(() => unpickle(bytes(0x80, 2, 0x28, 'o', 0x2e), noGlobals)).toThrowError(expect.objectContaining({ code: 'UNSAFE_PICKLE' }));
  });

  it('caps nesting, memo, stack and string sizes', () => {
    const marks = bytes(0x80, 2, ...Array<number>(20).fill(0x28));
    expect(() => unpickle(marks, { ...noGlobals, limits: { maxNesting: 10 } })).toThrowError(expect.objectContaining({ code: 'PICKLE_INVALID', message: 'nesting exceeds 10 levels' }));
    const memo = bytes(0x80, 2, 0x4e, ...Array.from({ length: 5 }, (_, i) => [0x71, i]).flat(), 0x2e);
    expect(() => unpickle(memo, { ...noGlobals, limits: { maxMemo: 3 } })).toThrowError(expect.objectContaining({ message: 'memo exceeds 3 entries' }));
    const stack = bytes(0x80, 2, ...Array<number>(6).fill(0x4e), 0x2e);
    expect(() => unpickle(stack, { ...noGlobals, limits: { maxStack: 4 } })).toThrowError(expect.objectContaining({ message: 'stack exceeds 4 items' }));
    const string = bytes(0x80, 2, 0x58, 0x00, 0x00, 0x00, 0x40, 0x2e);
    expect(() => unpickle(string, noGlobals)).toThrowError(expect.objectContaining({ message: expect.stringMatching(/string of 1073741824 bytes exceeds/) }));
  });

  it('fails cleanly on a truncated pickle', () => {
    expect(() => unpickle(bytes(0x80, 2, 0x58, 10, 0, 0, 0, 'abc'), noGlobals)).toThrowError(expect.objectContaining({ code: 'PICKLE_INVALID', message: expect.stringMatching(/ends inside an opcode/) }));
  });

  it('keeps unknown objects inert: NEWOBJ + SETITEMS build an OpaqueObject, nothing is called', () => {
    // An AttributeDict-like dict subclass: GLOBAL, EMPTY_TUPLE, NEWOBJ, MARK, 'lr', 0.1, SETITEMS, STOP
    const data = bytes(0x80, 2, 'c', 'trainer.utils\nAttributeDict\n', 0x29, 0x81, 0x28, 0x58, 2, 0, 0, 0, 'lr', 0x47, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a, 0x75, 0x2e);
    const value = unpickle(data, noGlobals) as OpaqueObject;
    expect(value).toBeInstanceOf(OpaqueObject);
    expect(value.global).toBe('trainer.utils.AttributeDict');
    expect(value.items.get('lr')).toBe(0.1);
  });
});
