import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // e2e tests start real listeners; two workers fit this 2-core machine without starving the proxies.
    maxWorkers: 2,
    reporters: ['default', './test/summary-reporter.ts'],
  },
});
