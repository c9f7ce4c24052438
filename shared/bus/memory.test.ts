import { describe, expect, it } from 'vitest';
import { createEvent, type AnyCloudEvent } from '../events/index.ts';
import { MemoryEventBus } from './memory.ts';

const event = (runId: string) =>
  createEvent('heimdall.checkpoint.created', { stage: 'ingest', source: 'heimdall/ingest', data: { bucket: 'b', key: 'k', size: 1, etag: 'e', runId } });

describe('MemoryEventBus', () => {
  it('delivers to matching subscribers, in order, and drops a re-published id', async () => {
    const bus = new MemoryEventBus();
    const seen: string[] = [];
    bus.subscribe(['heimdall.checkpoint.created'], async (e) => void seen.push(e.id));
    bus.subscribe(['heimdall.model.exported'], async () => void seen.push('wrong'));
    await bus.publish(event('0000000000000001'));
    await bus.publish(event('0000000000000002'));
    await bus.publish(event('0000000000000001'));
    await bus.close();
    expect(seen).toEqual(['0000000000000001.ingest', '0000000000000002.ingest']);
  });

  it('keeps delivering after a handler throws, reporting the error', async () => {
    const errors: string[] = [];
    const bus = new MemoryEventBus((error, e: AnyCloudEvent) => errors.push(`${e.id}: ${(error as Error).message}`));
    const seen: string[] = [];
    bus.subscribe('*', async (e) => {
      if (e.id.startsWith('0000000000000001')) throw new Error('boom');
      seen.push(e.id);
    });
    await bus.publish(event('0000000000000001'));
    await bus.publish(event('0000000000000002'));
    await bus.close();
    expect(errors).toEqual(['0000000000000001.ingest: boom']);
    expect(seen).toEqual(['0000000000000002.ingest']);
  });
});
