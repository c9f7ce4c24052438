import { describe, expect, it } from 'vitest';
import consumers from '../../../infra/nats/consumers.json' with { type: 'json' };
import { consumerOfDurable, replicationCaveat } from './provision.ts';

describe('consumerOfDurable', () => {
  it('names the consumer of infra/nats/consumers.json that a MaxDeliver advisory names by its durable', () => {
    expect(consumerOfDurable('heimdall-export')).toBe('export');
    expect(consumerOfDurable('heimdall-ingest')).toBe('ingest');
    expect(consumerOfDurable(consumers.subscribers.durable_name)).toBe('subscribers');
    // Durables of others (the local broker's, an operator's) are none of ours.
    expect(consumerOfDurable('heimdall-http-export')).toBeUndefined();
    expect(consumerOfDurable('defaults')).toBeUndefined();
  });
});

describe('replicationCaveat', () => {
  it('warns about replicated streams on nats-server before 2.10, and only then', () => {
    expect(replicationCaveat('2.9.10', 3)).toMatch(/^nats-server 2\.9\.10 loses compare-and-set writes .* HEIMDALL_NATS_REPLICAS=3 run nats-server 2\.10 or later$/);
    expect(replicationCaveat(undefined, 3)).toMatch(/unknown version/);
    expect(replicationCaveat('2.9.10', 1)).toBeUndefined();
    expect(replicationCaveat('2.10.26', 3)).toBeUndefined();
    expect(replicationCaveat('2.15.1', 5)).toBeUndefined();
    expect(replicationCaveat('3.0.0', 3)).toBeUndefined();
  });
});
