export * from './envelope.ts';
export * from './schemas.ts';
export * from './binary.ts';
