// The shipped example configs: each passes `lb --check` cleanly, and examples/lb.toml documents every key.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseToml } from '../../src/config/load.ts';
import { schema } from '../../src/config/validate.ts';
import { runLb } from '../helpers/cli.ts';

const EXAMPLES = join(import.meta.dirname, '../../examples');
const files = readdirSync(EXAMPLES)
  .filter((f) => f.endsWith('.toml'))
  .sort();

type Doc = Record<string, unknown>;
const isTable = (v: unknown): v is Doc => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The example as written (not validated, so no defaults are filled in). */
function parseExample(name: string): Doc {
  const loaded = parseToml(readFileSync(join(EXAMPLES, name), 'utf8'));
  if (!loaded.ok) throw new Error(`${name} does not parse: ${loaded.diagnostics.map((d) => d.message).join('; ')}`);
  return loaded.doc as Doc;
}

const listenersOf = (doc: Doc) => Object.values(doc.listeners as Record<string, Doc>);
const groupsOf = (doc: Doc) => listenersOf(doc).flatMap((l) => l.groups as Doc[]);

it('there are examples, the four named ones among them', () => {
  expect(files).toEqual(expect.arrayContaining(['distcc.toml', 'imap-failover.toml', 'lb.toml', 'sticky-hash.toml']));
});

/**
 * The only warnings an example may draw, each its reason in the file: lb.toml, the complete reference,
 * sets maxconn beside listeners Node accepts for, and shows what --check says of them.
 */
const EXPECTED_WARNINGS: Record<string, RegExp[]> = {
  'lb.toml': [/global\.maxconn: warning: listener "debug" is accepted by Node \(packet_dump\)/],
};

describe.each(files)('examples/%s', (name) => {
  it('passes lb --check with exit 0, no warnings but its expected ones, and the right summary', async () => {
    const file = join(EXAMPLES, name);
    const doc = parseExample(name);
    const n = {
      listeners: listenersOf(doc).length,
      groups: groupsOf(doc).length,
      backends: groupsOf(doc).reduce((sum, g) => sum + (g.backends as unknown[]).length, 0),
    };
    const plural = (count: number, word: string) => `${count} ${word}${count === 1 ? '' : 's'}`;
    const summary = `${plural(n.listeners, 'listener')}, ${plural(n.groups, 'group')}, ${plural(n.backends, 'backend')}`;
    const r = await runLb(['--check', file]);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 0, stdout: `${file}: ok (${summary})\n` });
    const warnings = r.stderr.split('\n').filter((l) => l !== '');
    const expected = EXPECTED_WARNINGS[name] ?? [];
    expect(warnings).toHaveLength(expected.length);
    expected.forEach((re, i) => expect(warnings[i]).toMatch(re));
  });
});

describe('what each example shows', () => {
  it('imap-failover.toml: two mail servers with maxc, then a backup group', () => {
    const [main, backup, ...rest] = groupsOf(parseExample('imap-failover.toml'));
    expect(rest).toEqual([]);
    expect(main!.backends).toHaveLength(2);
    for (const b of main!.backends as string[]) expect(b).toMatch(/:[1-9]\d*$/);
    expect((backup!.backends as unknown[]).length).toBeGreaterThan(0);
  });

  it('sticky-hash.toml: a hash group with hash_failover', () => {
    const doc = parseExample('sticky-hash.toml');
    expect(listenersOf(doc)[0]!.hash_failover).toBe(true);
    expect(groupsOf(doc)[0]!.policy).toBe('hash');
  });

  it('distcc.toml: policy "first" and a CPU count (maxc >= 1) on every backend', () => {
    const groups = groupsOf(parseExample('distcc.toml'));
    expect(groups.map((g) => g.policy)).toEqual(['first']);
    for (const b of groups[0]!.backends as string[]) expect(b).toMatch(/:[1-9]\d*$/);
  });
});

describe('examples/lb.toml is the complete reference', () => {
  type SchemaNode = {
    $ref?: string;
    description?: string;
    properties?: Record<string, SchemaNode>;
    additionalProperties?: boolean | SchemaNode;
    items?: SchemaNode;
    then?: SchemaNode;
  };
  const definitions = (schema as { definitions: Record<string, SchemaNode> }).definitions;

  /** Every key path the schema defines; `*` stands for any table key (a listener name), `[]` for any element. */
  function schemaKeys(node: SchemaNode, prefix: string[] = [], out: string[][] = []): string[][] {
    const n = node.$ref ? definitions[node.$ref.replace('#/definitions/', '')]! : node;
    for (const [key, child] of Object.entries(n.properties ?? {})) {
      // A deprecated key is not set in the reference: setting it would make `--check` warn.
      if (child.description?.startsWith('Deprecated')) continue;
      out.push([...prefix, key]);
      schemaKeys(child, [...prefix, key], out);
    }
    if (isTable(n.additionalProperties)) schemaKeys(n.additionalProperties, [...prefix, '*'], out);
    if (n.items) schemaKeys(n.items, [...prefix, '[]'], out);
    if (n.then) schemaKeys(n.then, prefix, out);
    return out;
  }

  function isSet(value: unknown, path: string[]): boolean {
    if (path.length === 0) return true;
    const [key, ...rest] = path;
    if (key === '[]') return Array.isArray(value) && value.some((v) => isSet(v, rest));
    if (!isTable(value)) return false;
    if (key === '*') return Object.values(value).some((v) => isSet(v, rest));
    return Object.hasOwn(value, key!) && isSet(value[key!], rest);
  }

  /** A backend's `health` override has the group's health keys: setting them once in a group is enough. */
  const SAME_KEYS_AS: [string, string][] = [['listeners.*.groups.[].backends.[].health.', 'listeners.*.groups.[].health.']];

  it('sets every key of schemas/lb.schema.json', () => {
    const keys = schemaKeys(schema as SchemaNode).map((k) => k.join('.'));
    expect(keys.length).toBeGreaterThan(30);
    const doc = parseExample('lb.toml');
    const documented = (key: string): boolean => {
      const alias = SAME_KEYS_AS.find(([from]) => key.startsWith(from));
      return isSet(doc, (alias ? alias[1] + key.slice(alias[0].length) : key).split('.'));
    };
    expect(keys.filter((k) => !documented(k))).toEqual([]);
  });

  it('uses every policy name in its comments', () => {
    const text = readFileSync(join(EXAMPLES, 'lb.toml'), 'utf8');
    for (const policy of ['rr', 'hash', 'leastconn', 'random', 'weighted', 'first']) {
      expect(text).toMatch(new RegExp(`^#\\s+"${policy}"\\s`, 'm'));
    }
  });
});
