/**
 * What the registry logs of a training (registryFields) and reads back for the gate's metric check
 * (trainingMetricOf): the round trip through version tags, which are strings.
 */
import { describe, expect, it } from 'vitest';
import { registryFields, trainingMetricOf } from './registry-fields.ts';

describe('registryFields', () => {
  it('logs hyper-parameters as params, epoch, step and metrics as training.* metrics and tags, and the training run as a tag', () => {
    const fields = registryFields({ epoch: 7, step: 700, metrics: { val_loss: 0.1 + 0.2 }, hyperParameters: { lr: 3e-4, augment: true, note: 'x'.repeat(7000) }, mlflowRunId: '0123456789abcdef0123456789abcdef' });
    expect(fields.params).toEqual({ lr: '0.0003', augment: 'true', note: 'x'.repeat(6000) });
    expect(fields.metrics).toEqual({ 'training.epoch': 7, 'training.step': 700, 'training.val_loss': 0.30000000000000004 });
    expect(fields.tags).toEqual({ 'training.epoch': '7', 'training.step': '700', 'training.val_loss': '0.30000000000000004', training_run_id: '0123456789abcdef0123456789abcdef' });
    // A tag gives the gate the metric back exactly: String() of a double parses to the same double.
    expect(trainingMetricOf(fields.tags, 'val_loss')).toBe(0.1 + 0.2);
  });

  it('logs nothing without a training, and reads no metric from a tag that is absent or not a finite number', () => {
    expect(registryFields(undefined)).toEqual({ params: {}, metrics: {}, tags: {} });
    expect(trainingMetricOf({}, 'val_loss')).toBeUndefined();
    for (const edited of ['NaN', '', ' ', '0x10', '1e999', 'Infinity']) expect(trainingMetricOf({ 'training.val_loss': edited }, 'val_loss')).toBeUndefined();
    expect(trainingMetricOf({ 'training.val_loss': '-2.5e-3' }, 'val_loss')).toBe(-0.0025);
  });
});
