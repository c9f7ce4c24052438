import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'functions/**/*.test.ts', 'shared/**/*.test.ts'],
    // Real services and the Python oracle: generous limits; fixture generation runs in hooks.
    testTimeout: 600_000,
    hookTimeout: 1_800_000,
    pool: 'forks',
  },
});
