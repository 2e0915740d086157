// Stage 1 of the config pipeline: read the file and parse TOML.

import { readFileSync } from 'node:fs';
import { parse, TomlError } from 'smol-toml';
import { Code } from '../errors.ts';
import { diagnostic, type Diagnostic } from './diagnostics.ts';
import type { PathSegment } from './locate.ts';

/** Keys that could reach Object.prototype if any later code copied the document with plain objects. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

export type LoadResult =
  | { ok: true; source: string; doc: unknown }
  | { ok: false; unreadable: boolean; diagnostics: Diagnostic[] };

export function loadToml(file: string): LoadResult {
  let source: string;
  try {
    source = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const d = diagnostic(Code.CONFIG_UNREADABLE, [], `cannot read config: ${e.code ?? e.message}`);
    return { ok: false, unreadable: true, diagnostics: [d] };
  }
  return parseToml(source);
}

export function parseToml(source: string): LoadResult {
  let doc: unknown;
  try {
    doc = parse(source, { unsafeKeyBehaviour: 'throw' } as Parameters<typeof parse>[1]);
  } catch (err) {
    if (err instanceof TomlError) {
      const reason = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
      const d = diagnostic(Code.CONFIG_SYNTAX, [], `TOML syntax error: ${reason}`);
      d.line = err.line;
      d.col = err.column;
      return { ok: false, unreadable: false, diagnostics: [d] };
    }
    const d = diagnostic(Code.CONFIG_SYNTAX, [], `TOML syntax error: ${(err as Error).message}`);
    return { ok: false, unreadable: false, diagnostics: [d] };
  }
  const bad: Diagnostic[] = [];
  findForbiddenKeys(doc, [], bad);
  return bad.length ? { ok: false, unreadable: false, diagnostics: bad } : { ok: true, source, doc };
}

function findForbiddenKeys(value: unknown, path: PathSegment[], out: Diagnostic[]): void {
  if (value === null || typeof value !== 'object') return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => findForbiddenKeys(v, [...path, i], out));
    return;
  }
  for (const key of Object.keys(value)) {
    if (FORBIDDEN_KEYS.has(key)) out.push(diagnostic(Code.CONFIG_UNKNOWN_KEY, [...path, key], `key "${key}" is not allowed`));
    else findForbiddenKeys((value as Record<string, unknown>)[key], [...path, key], out);
  }
}
