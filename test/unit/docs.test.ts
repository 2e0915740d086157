import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { renderReadme } from '../../src/cli/docs.ts';
import { USAGE } from '../../src/cli/usage.ts';
import { schema } from '../../src/config/validate.ts';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

describe('README', () => {
  it('carries the current --help text and config reference (run `npm run docs` after changing them)', () => {
    expect(readme).toBe(renderReadme(readme));
    expect(readme).toContain(USAGE);
  });

  it('documents every top-level config section', () => {
    for (const key of Object.keys((schema as { properties: object }).properties)) expect(readme).toContain(`\`${key}\``);
  });
});

describe('schema', () => {
  it('describes every property', () => {
    const missing: string[] = [];
    const walk = (node: unknown, path: string): void => {
      if (node === null || typeof node !== 'object') return;
      const n = node as Record<string, unknown>;
      for (const [k, v] of Object.entries((n.properties as Record<string, Record<string, unknown>>) ?? {})) {
        if (typeof v.description !== 'string' && typeof v.$ref !== 'string') missing.push(`${path}.${k}`);
        walk(v, `${path}.${k}`);
      }
      for (const k of ['then', 'items', 'additionalProperties']) walk(n[k], path);
      for (const [k, v] of Object.entries((n.definitions as object) ?? {})) walk(v, `#${k}`);
    };
    walk(schema, '');
    expect(missing).toEqual([]);
  });
});
