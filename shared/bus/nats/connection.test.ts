import { describe, expect, it } from 'vitest';
import { withoutCredentials } from './connection.ts';

describe('NATS server lists in messages', () => {
  it('keep hosts and drop user, password or token', () => {
    expect(withoutCredentials('nats://user:pa55@nats-1:4222,nats://t0ken@nats-2:4222')).toBe('nats://nats-1:4222,nats://nats-2:4222');
    expect(withoutCredentials('nats://127.0.0.1:4222')).toBe('nats://127.0.0.1:4222');
  });
});
