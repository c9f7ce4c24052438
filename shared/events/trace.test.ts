import { describe, expect, it } from 'vitest';
import { contextAfter, continueTrace, parseTraceparent, startTrace, traceFields } from './trace.ts';

const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

describe('W3C trace context', () => {
  it('parses a traceparent into version, trace id, parent id and flags', () => {
    expect(parseTraceparent(traceparent)).toEqual({ version: '00', traceId: '4bf92f3577b34da6a3ce929d0e0e4736', parentId: '00f067aa0ba902b7', flags: '01' });
    expect(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0')).toBeUndefined();
    expect(parseTraceparent(`${traceparent} `)).toBeUndefined();
  });

  it('starts a trace: random trace and span ids, sampled', () => {
    const [first, second] = [startTrace(), startTrace()];
    expect(first.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    expect(parseTraceparent(first.traceparent)).toBeDefined();
    expect(traceFields(first).traceId).not.toBe(traceFields(second).traceId);
    expect(first).not.toHaveProperty('tracestate');
  });

  it('continues a trace in a new span: same trace id, sampling and tracestate; a new parent id', () => {
    const child = continueTrace({ traceparent, tracestate: 'rojo=1' });
    expect(child).toEqual({ traceparent: expect.stringMatching(/^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$/), tracestate: 'rojo=1' });
    expect(traceFields(child).spanId).not.toBe('00f067aa0ba902b7');
    expect(continueTrace({ traceparent: traceparent.replace(/-01$/, '-00') }).traceparent).toMatch(/-00$/);
  });

  it('writes version 00 with only the flags it defines when continuing a later version', () => {
    expect(continueTrace({ traceparent: 'cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-more' }).traceparent).toMatch(/^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-03$/);
  });

  it('starts a new trace for an event without one (or with an invalid one)', () => {
    for (const parent of [undefined, {}, { traceparent: 'not one', tracestate: 'rojo=1' }]) {
      const started = continueTrace(parent);
      expect(parseTraceparent(started.traceparent)?.flags).toBe('01');
      expect(started).not.toHaveProperty('tracestate');
    }
  });

  it('the context after an event: its trace continued and its subject', () => {
    expect(contextAfter({ traceparent, subject: 'runs/a.pth' })).toEqual({ traceparent: expect.stringMatching(/^00-4bf92f3577b34da6a3ce929d0e0e4736-/), subject: 'runs/a.pth' });
    expect(contextAfter(undefined)).not.toHaveProperty('subject');
  });

  it('gives logs the trace id and span id of a context, nothing for none', () => {
    expect(traceFields({ traceparent })).toEqual({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7' });
    expect(traceFields({})).toEqual({});
    expect(traceFields(undefined)).toEqual({});
  });
});
