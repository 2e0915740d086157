// Stage 1 of the config pipeline: read the file and parse TOML, within bounds.
//
// Everything here is linear in the size of the file and bounded in depth: the file is refused past
// MAX_CONFIG_BYTES without being read, the text is scanned for its nesting depth before smol-toml sees
// it (smol-toml walks dotted keys and headers in loops but recurses on arrays and inline tables; its own
// depth counter is set to the same limit as a second fence), and the parsed document is walked with an
// explicit stack. A 5,000-level dotted key used to overflow the stack in a recursive walk here.

import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { parse, TomlError } from 'smol-toml';
import { Code } from '../errors.ts';
import { diagnostic, placeDiagnostics, type Diagnostic } from './diagnostics.ts';
import { MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH } from './limits.ts';
import { Locator, type PathSegment } from './locate.ts';

/** Keys that could reach Object.prototype if any later code copied the document with plain objects. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

export type LoadResult =
  | { ok: true; source: string; doc: unknown; locator: Locator }
  | { ok: false; unreadable: boolean; diagnostics: Diagnostic[] };

export type ReadResult = { ok: true; source: string } | { ok: false; unreadable: boolean; diagnostics: Diagnostic[] };

function unreadable(code: Diagnostic['code'], message: string): ReadResult & { ok: false } {
  return { ok: false, unreadable: true, diagnostics: [diagnostic(code, [], message)] };
}

function tooLarge(bytes: number | null): ReadResult & { ok: false } {
  const size = bytes === null ? 'more than' : `${bytes} bytes,`;
  const d = diagnostic(Code.CONFIG_TOO_LARGE, [], `config file is ${size} over the limit of ${MAX_CONFIG_BYTES} bytes (4 MiB)`);
  return { ok: false, unreadable: false, diagnostics: [d] };
}

/** A refusal for anything that is not a regular file, from its stat. */
export function notRegularFile(st: { isFile(): boolean; isDirectory(): boolean; isFIFO(): boolean }): ReadResult | null {
  if (st.isFile()) return null;
  if (st.isDirectory()) return unreadable(Code.CONFIG_UNREADABLE, 'cannot read config: EISDIR (it is a directory)');
  const what = st.isFIFO() ? 'a FIFO' : 'not a regular file';
  return unreadable(Code.CONFIG_NOT_FILE, `cannot read config: it is ${what} (lb reads its config from a regular file)`);
}

/**
 * Reads the file behind an open descriptor: regular files only, at most MAX_CONFIG_BYTES. The caller
 * opened it with O_NONBLOCK, so a FIFO put in place of the file is refused here instead of blocking.
 */
export function readConfigFd(fd: number): ReadResult {
  const st = fstatSync(fd);
  const refused = notRegularFile(st);
  if (refused) return refused;
  if (st.size > MAX_CONFIG_BYTES) return tooLarge(st.size);
  // Read to EOF, not to st.size: the file may change under us. One byte past the limit says "too large".
  const chunks: Buffer[] = [];
  let len = 0;
  while (len <= MAX_CONFIG_BYTES) {
    const chunk = Buffer.allocUnsafe(Math.min(Math.max(st.size + 1, 64 * 1024), MAX_CONFIG_BYTES + 1 - len));
    const n = readSync(fd, chunk, 0, chunk.length, null);
    if (n === 0) break;
    chunks.push(chunk.subarray(0, n));
    len += n;
  }
  if (len > MAX_CONFIG_BYTES) return tooLarge(null);
  return { ok: true, source: Buffer.concat(chunks, len).toString('utf8') };
}

export function readConfigFile(file: string): ReadResult {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return unreadable(Code.CONFIG_UNREADABLE, `cannot read config: ${e.code ?? e.message}`);
  }
  try {
    return readConfigFd(fd);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return unreadable(Code.CONFIG_UNREADABLE, `cannot read config: ${e.code ?? e.message}`);
  } finally {
    closeSync(fd);
  }
}

export function loadToml(file: string): LoadResult {
  const read = readConfigFile(file);
  return read.ok ? parseBounded(read.source) : read;
}

/** Long keys are cut in a path shown to people (the full path of a too-deep key can be megabytes). */
function shortPath(path: readonly PathSegment[]): PathSegment[] {
  return path.map((s) => (typeof s === 'string' && s.length > 64 ? `${s.slice(0, 64)}…` : s));
}

function tooDeep(path: readonly PathSegment[]): Diagnostic {
  return diagnostic(Code.CONFIG_TOO_DEEP, shortPath(path), `nested more than ${MAX_CONFIG_DEPTH} levels deep (the limit)`);
}

export function parseToml(source: string): LoadResult {
  if (source.length > MAX_CONFIG_BYTES || Buffer.byteLength(source, 'utf8') > MAX_CONFIG_BYTES) {
    return tooLarge(Buffer.byteLength(source, 'utf8'));
  }
  return parseBounded(source);
}

/** Text read from a file of at most MAX_CONFIG_BYTES (invalid UTF-8 decodes to longer text: no recount). */
function parseBounded(source: string): LoadResult {
  // Before parsing: the depth limit with a line to show, and the key positions for later diagnostics.
  const locator = new Locator(source);
  if (locator.tooDeep) {
    const d = tooDeep(locator.tooDeep.path);
    d.line = locator.tooDeep.line;
    d.col = locator.tooDeep.col;
    return { ok: false, unreadable: false, diagnostics: [d] };
  }
  let doc: unknown;
  try {
    // smol-toml keeps `__proto__` as an own key of a null-prototype object (harmless); our own check below
    // then rejects it with its path and line, which smol-toml's 'throw' mode cannot give.
    doc = parse(source, { maxDepth: MAX_CONFIG_DEPTH });
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
  const bad = checkDocument(doc);
  if (bad.length) return { ok: false, unreadable: false, diagnostics: placeDiagnostics(bad, locator) };
  return { ok: true, source, doc, locator };
}

interface Visit {
  readonly value: unknown;
  readonly parent: Visit | null;
  readonly seg: PathSegment;
  readonly depth: number;
}

function pathOf(v: Visit): PathSegment[] {
  const out: PathSegment[] = [];
  for (let n: Visit | null = v; n?.parent; n = n.parent) out.push(n.seg);
  return out.reverse();
}

/**
 * Forbidden keys anywhere, and (should the text scan ever disagree with the parser) any level past the
 * depth limit. An explicit stack and parent links instead of a copied path per node: linear in the size
 * of the document whatever its shape.
 */
export function checkDocument(doc: unknown): Diagnostic[] {
  const out: Diagnostic[] = [];
  const stack: Visit[] = [{ value: doc, parent: null, seg: '', depth: 0 }];
  for (let v = stack.pop(); v !== undefined; v = stack.pop()) {
    const value = v.value;
    if (value === null || typeof value !== 'object' || value instanceof Date) continue;
    if (v.depth >= MAX_CONFIG_DEPTH) {
      const [first] = Array.isArray(value) ? [0] : Object.keys(value);
      if (first !== undefined) out.push(tooDeep([...pathOf(v), first]));
      continue;
    }
    if (Array.isArray(value)) {
      // Only containers are visited: a scalar has no keys, and a visit record per number of a huge array
      // would cost more than the array.
      for (let i = value.length - 1; i >= 0; i--) {
        const item: unknown = value[i];
        if (item !== null && typeof item === 'object' && !(item instanceof Date)) stack.push({ value: item, parent: v, seg: i, depth: v.depth + 1 });
      }
      continue;
    }
    const keys = Object.keys(value);
    for (let i = keys.length - 1; i >= 0; i--) {
      const key = keys[i]!;
      if (FORBIDDEN_KEYS.has(key)) out.push(diagnostic(Code.CONFIG_UNKNOWN_KEY, [...pathOf(v), key], `key "${key}" is not allowed`));
      else stack.push({ value: (value as Record<string, unknown>)[key], parent: v, seg: key, depth: v.depth + 1 });
    }
  }
  return out;
}
