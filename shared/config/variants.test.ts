/**
 * The variants part of the configuration: opt-in (none by default), names checked against the
 * variants the exporter writes, and each variant's tolerance validated like the parity tolerance.
 */
import { describe, expect, it } from 'vitest';
import { refusal } from './refusal.test-helper.ts';
import { loadConfig } from './index.ts';

describe('variants configuration', () => {
  it('exports no variant unless asked to', () => {
    expect(loadConfig({}).variants).toEqual([]);
    expect(loadConfig({ HEIMDALL_VARIANTS: '' }).variants).toEqual([]);
  });

  it('takes a comma list of known variants, once each', () => {
    expect(loadConfig({ HEIMDALL_VARIANTS: 'int8' }).variants).toEqual(['int8']);
    expect(loadConfig({ HEIMDALL_VARIANTS: ' int8 , int8,' }).variants).toEqual(['int8']);
  });

  it('refuses an unknown variant, naming the variable and the known ones', () => {
    expect(refusal({ HEIMDALL_VARIANTS: 'int8,int4' })).toMatch(/HEIMDALL_VARIANTS: must be variant names separated by commas \(int8\)/);
  });

  it('has an int8 tolerance that must be a positive number', () => {
    expect(loadConfig({}).variantTolerance.int8).toBe(1e-2);
    expect(loadConfig({ HEIMDALL_INT8_TOLERANCE: '1e-9' }).variantTolerance.int8).toBe(1e-9);
    expect(refusal({ HEIMDALL_INT8_TOLERANCE: '0' })).toMatch(/HEIMDALL_INT8_TOLERANCE: must be positive/);
    expect(refusal({ HEIMDALL_INT8_TOLERANCE: 'lots' })).toMatch(/HEIMDALL_INT8_TOLERANCE: /);
  });
});
