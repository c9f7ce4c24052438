export * from './envelope.ts';
export * from './schemas.ts';
