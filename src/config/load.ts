// Stage 1 of the config pipeline: read the file and parse TOML.

import { readFileSync } from 'node:fs';
import { parse, TomlError } from 'smol-toml';
import { Code } from '../errors.ts';
import { diagnostic, placeDiagnostics, type Diagnostic } from './diagnostics.ts';
import { Locator, type PathSegment } from './locate.ts';

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
    // smol-toml keeps `__proto__` as an own key of a null-prototype object (harmless); our own check below
    // then rejects it with its path and line, which smol-toml's 'throw' mode cannot give.
    doc = parse(source);
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
  if (bad.length) return { ok: false, unreadable: false, diagnostics: placeDiagnostics(bad, new Locator(source)) };
  return { ok: true, source, doc };
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
