export * from './envelope.ts';
export * from './schemas.ts';
export * from './binary.ts';
export * from './trace.ts';
