// Deterministic config fuzzing: seeded mutations of the example configs and random TOML structures.
//
// The same seed gives the same configs on every machine (no Math.random, no clock), so a failure found
// by `test/fuzz/check-cli.ts` or the in-process test is reproduced by its seed and index alone.
// Four kinds: text mutations of an example (spans deleted, duplicated, swapped; tokens inserted from a
// TOML/lb dictionary), structural mutations (parse, change the tree, write TOML back, maybe then mutate
// the text), random documents built from the schema's keys, and pathological shapes (deep keys, headers,
// arrays and inline tables; long strings; many keys), all kept under `maxBytes`.

import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse, stringify } from 'smol-toml';
import { prng } from '../../bench/lib/prng.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');

export { prng } from '../../bench/lib/prng.ts';

let examples: { name: string; text: string }[] | null = null;

export function exampleConfigs(): { name: string; text: string }[] {
  const dir = path.join(ROOT, 'examples');
  return (examples ??= readdirSync(dir)
    .filter((f) => f.endsWith('.toml'))
    .sort()
    .map((name) => ({ name, text: readFileSync(path.join(dir, name), 'utf8') })));
}

const KEYS = [
  'global', 'control', 'defaults', 'listeners', 'drain_timeout', 'log_format', 'access_log', 'listen', 'socket',
  'admin', 'allow', 'idle_timeout', 'connect_timeout', 'source', 'hash_failover', 'autodisable', 'packet_dump',
  'packet_dump_file', 'groups', 'queue', 'max', 'timeout', 'policy', 'backends', 'health', 'host', 'port', 'maxc',
  'weight', 'enabled', 'interval', 'rise', 'fall', 'send', 'expect', 'level', 'socket_level', 'http', 'workers',
  '__proto__', 'constructor', 'prototype', 'web', 'imap', '0', '', 'a b', 'ké',
];

const VALUES = [
  '0', '1', '-1', '65535', '65536', '9223372036854775807', '-9223372036854775808', '1e999', '-0.0', 'nan', 'inf', '-inf',
  '0x7fffffff', '0o777', '0b101', '1_000', '3.14', 'true', 'false', '1979-05-27T07:32:00Z', '1979-05-27', '07:32:00',
  '""', '"x"', '"127.0.0.1:0"', '"127.0.0.1:8080"', '"[::1]:80"', '"::1"', '"[::1]"', '":8080"', '"*:0"', '"localhost"',
  '"127.0.0.1"', '"10.0.0.0/8"', '"::1/128"', '"10.0.0.0/33"', '"127.0.0.1:1:5"', '"127.0.0.1::3"', '"h:1:2:3"',
  '"[::1]:1:2"', '"imap"', '"nosuchservice"', '"5s"', '"250ms"', '"1h30m"', '"30s1m"', '"5s5s"', '"0"', '"1.5s"',
  '"-1s"', '"rr"', '"hash"', '"leastconn"', '"random"', '"weighted"', '"first"', '"roundabout"', '"hex"', '"balance"',
  '"off"', '"text"', '"json"', '"/re(/"', '"/^OK/i"', '"/x/zz"', '"\\u0000"', '"\\r\\n"', '"/dev/null"', '"/nonexistent/x"',
  '"/tmp"', "'''\nmulti\n'''", '"""\nmulti\\\n  line"""', '[]', '[1, "a"]', '["127.0.0.1:1"]', '{}', '{ host = "127.0.0.1" }',
  '{ host = "127.0.0.1", port = 1, maxc = 2, weight = 0 }', '{ interval = "100ms", fall = 0 }', '"é"', '"\\uD800"',
];

const TOKENS = [
  '[', ']', '[[', ']]', '{', '}', '"', "'", '"""', "'''", '=', '.', ',', '\n', '\r\n', '#', '\\', ' ', '\t', '\u0000',
  '\uFEFF', '\u2028', 'é', '💥', ...KEYS, ...VALUES,
];

const pick = <T>(rnd: () => number, list: readonly T[]): T => list[Math.floor(rnd() * list.length)]!;
const int = (rnd: () => number, lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));

/** One text mutation of `text`. */
function mutateText(rnd: () => number, text: string): string {
  const at = int(rnd, 0, text.length);
  const span = Math.min(text.length - at, int(rnd, 0, rnd() < 0.8 ? 16 : 400));
  switch (int(rnd, 0, 7)) {
    case 0: // delete a span
      return text.slice(0, at) + text.slice(at + span);
    case 1: // duplicate a span
      return text.slice(0, at + span) + text.slice(at, at + span) + text.slice(at + span);
    case 2: // insert a token
    case 3:
      return text.slice(0, at) + pick(rnd, TOKENS) + text.slice(at);
    case 4: { // replace the value of a `key = value` line
      const lines = text.split('\n');
      const i = int(rnd, 0, lines.length - 1);
      const eq = lines[i]!.indexOf('=');
      if (eq >= 0) lines[i] = `${lines[i]!.slice(0, eq + 1)} ${pick(rnd, VALUES)}`;
      return lines.join('\n');
    }
    case 5: { // swap two lines
      const lines = text.split('\n');
      const i = int(rnd, 0, lines.length - 1);
      const j = int(rnd, 0, lines.length - 1);
      [lines[i], lines[j]] = [lines[j]!, lines[i]!];
      return lines.join('\n');
    }
    case 6: // flip one character
      return text.slice(0, at) + String.fromCharCode(int(rnd, 0, 127)) + text.slice(at + 1);
    default: // a key = value line somewhere
      return text.slice(0, at) + `\n${pick(rnd, KEYS)} = ${pick(rnd, VALUES)}\n` + text.slice(at);
  }
}

function randomValue(rnd: () => number, depth: number): unknown {
  const r = rnd();
  if (depth > 0 && r < 0.15) return Array.from({ length: int(rnd, 0, 4) }, () => randomValue(rnd, depth - 1));
  if (depth > 0 && r < 0.3) return randomTable(rnd, depth - 1);
  if (r < 0.45) return int(rnd, -2, 70000);
  if (r < 0.5) return rnd() < 0.5;
  if (r < 0.55) return rnd() * 10;
  const text = pick(rnd, VALUES);
  try {
    return parse(`v = ${text}`).v;
  } catch {
    return text; // not a TOML value by itself: the text as a string
  }
}

function randomTable(rnd: () => number, depth: number): Record<string, unknown> {
  const t: Record<string, unknown> = {};
  for (let n = int(rnd, 0, 5); n > 0; n--) t[pick(rnd, KEYS.filter((k) => k !== '__proto__'))] = randomValue(rnd, depth);
  return t;
}

/** Changes one node of a parsed document in place. */
function mutateTree(rnd: () => number, doc: Record<string, unknown>): void {
  let node: unknown = doc;
  for (let steps = int(rnd, 0, 6); steps > 0; steps--) {
    if (node === null || typeof node !== 'object') break;
    const keys = Object.keys(node);
    if (keys.length === 0) break;
    const next = (node as Record<string, unknown>)[pick(rnd, keys)];
    if (next === null || typeof next !== 'object' || next instanceof Date) break;
    node = next;
  }
  if (node === null || typeof node !== 'object') return;
  const obj = node as Record<string, unknown>;
  const keys = Object.keys(obj);
  const key = keys.length && rnd() < 0.7 ? pick(rnd, keys) : Array.isArray(obj) ? String(obj.length) : pick(rnd, KEYS);
  if (key === '__proto__') return;
  const r = rnd();
  if (r < 0.3) delete obj[key];
  else if (r < 0.5 && Array.isArray(obj)) obj.push(structuredClone(obj[int(rnd, 0, obj.length - 1)]) ?? randomValue(rnd, 2));
  else obj[key] = randomValue(rnd, 3);
}

/** Pathological shapes: deep keys, headers, arrays, inline tables; long strings; many keys. */
function pathological(rnd: () => number, maxBytes: number): string {
  const depth = rnd() < 0.5 ? int(rnd, 1, 120) : int(rnd, 1, Math.min(20000, maxBytes / 4));
  const k = pick(rnd, ['k', '"q"', "'l'", 'listeners', 'a-b_c']);
  const dotted = (n: number): string => Array.from({ length: n }, () => k).join('.');
  switch (int(rnd, 0, 7)) {
    case 0:
      return `${dotted(depth)} = 1\n`;
    case 1:
      return `[${dotted(depth)}]\nx = 1\n`;
    case 2:
      return `[[${dotted(depth)}]]\n[[${dotted(depth)}]]\n`;
    case 3:
      return `a = ${'['.repeat(depth)}1${']'.repeat(rnd() < 0.9 ? depth : int(rnd, 0, depth))}\n`;
    case 4:
      return `a = ${'{ b = '.repeat(depth)}1${' }'.repeat(rnd() < 0.9 ? depth : int(rnd, 0, depth))}\n`;
    case 5:
      return `[listeners.w]\nlisten = "${'x'.repeat(int(rnd, 0, maxBytes - 64))}"\n`;
    case 6: {
      const lines: string[] = [];
      let size = 0;
      for (let i = 0; size < maxBytes / 2 && i < depth; i++) {
        const line = `k${i} = ${i}\n`;
        lines.push(line);
        size += line.length;
      }
      return lines.join('');
    }
    default: {
      const backends: string[] = [];
      let size = 0;
      for (let i = 0; size < maxBytes / 2 && i < depth; i++) {
        const b = rnd() < 0.5 ? `"127.0.0.1:${i % 70000}:${i % 3}"` : `{ host = "h${i}", port = ${i % 70000}, zz = 1 }`;
        backends.push(b);
        size += b.length + 2;
      }
      return `[listeners.w]\nlisten = 0\n[[listeners.w.groups]]\nbackends = [${backends.join(', ')}]\n`;
    }
  }
}

export interface FuzzCase {
  readonly index: number;
  readonly kind: 'text' | 'tree' | 'random' | 'pathological';
  readonly text: string;
}

/**
 * The `index`-th config of the run seeded with `seed`: independent of the others (its own PRNG stream),
 * so one case can be regenerated alone. At most `maxBytes` long (UTF-16 units; about as many bytes).
 */
export function fuzzCase(seed: number, index: number, maxBytes = 256 * 1024): FuzzCase {
  const rnd = prng((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  const examples = exampleConfigs();
  const r = rnd();
  let kind: FuzzCase['kind'];
  let text: string;
  if (r < 0.5) {
    kind = 'text';
    text = pick(rnd, examples).text;
    for (let n = int(rnd, 1, rnd() < 0.8 ? 3 : 40); n > 0; n--) text = mutateText(rnd, text);
  } else if (r < 0.75) {
    kind = 'tree';
    const doc = parse(pick(rnd, examples).text) as Record<string, unknown>;
    for (let n = int(rnd, 1, 4); n > 0; n--) mutateTree(rnd, doc);
    try {
      text = stringify(doc);
    } catch {
      text = JSON.stringify(doc); // not TOML: a syntax error is a fine case too
    }
    if (rnd() < 0.3) text = mutateText(rnd, text);
  } else if (r < 0.95) {
    kind = 'random';
    const doc = randomTable(rnd, 4);
    if (rnd() < 0.7) doc.listeners = { web: { listen: '127.0.0.1:0', groups: [{ backends: [randomValue(rnd, 2)] }], ...randomTable(rnd, 2) } };
    try {
      text = stringify(doc);
    } catch {
      text = JSON.stringify(doc);
    }
  } else {
    kind = 'pathological';
    text = pathological(rnd, maxBytes);
  }
  return { index, kind, text: text.length > maxBytes ? text.slice(0, maxBytes) : text };
}
