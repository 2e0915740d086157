// The config pipeline: load → validate → compile → resolve → deep-freeze.
//
// `lb --check` runs exactly these stages; `lb run` runs them and only then binds anything, so a bad
// config never leaves a half-started process behind (balance bound and daemonised before parsing).

import { Code, Exit } from '../errors.ts';
import { MAX_REPORTED_PROBLEMS } from './limits.ts';
import { compileConfig } from './compile.ts';
import { diagnostic, placeDiagnostics, type Diagnostic } from './diagnostics.ts';
import type { ConfigDoc } from './doc.ts';
import { loadToml, parseToml, type LoadResult } from './load.ts';
import { formatPath, type Locator, type PathSegment } from './locate.ts';
import { resolveTable } from './resolve.ts';
import { deepFreeze, type RoutingTable } from './table.ts';
import { validateConfig } from './validate.ts';

export interface PipelineOptions {
  /** 'warning' for `--check` (CI's DNS may differ), 'error' for run and reload. */
  resolve: 'error' | 'warning' | 'skip';
}

export type PipelineResult =
  | { ok: true; table: RoutingTable; doc: ConfigDoc; warnings: Diagnostic[] }
  | { ok: false; exitCode: number; diagnostics: Diagnostic[] };

/** Runs the pipeline on a document already in memory (balance's command line, runtime edits). */
export async function buildTable(
  doc: unknown,
  opts: PipelineOptions,
  locator: Locator | null = null,
): Promise<PipelineResult> {
  const schemaErrors = validateConfig(doc);
  if (schemaErrors.length) {
    const diagnostics = [...schemaErrors, ...semanticErrorsDespite(doc, schemaErrors)];
    return { ok: false, exitCode: Exit.CONFIG, diagnostics: capped(placeDiagnostics(diagnostics, locator), schemaErrors.omitted ?? 0) };
  }
  const validDoc = doc as ConfigDoc;
  const compiled = compileConfig(validDoc);
  let diagnostics = compiled.diagnostics;
  let table = compiled.table;
  if (table && opts.resolve !== 'skip') {
    const resolved = await resolveTable(table, opts.resolve);
    diagnostics = [...diagnostics, ...resolved.diagnostics];
    table = resolved.table;
  }
  placeDiagnostics(diagnostics, locator);
  if (!table || diagnostics.some((d) => d.severity === 'error')) {
    return { ok: false, exitCode: Exit.CONFIG, diagnostics: capped(diagnostics) };
  }
  return { ok: true, table: deepFreeze(table), doc: validDoc, warnings: diagnostics };
}

/** The first MAX_REPORTED_PROBLEMS problems (in file order), then one line counting the rest. */
function capped(diagnostics: Diagnostic[], omitted = 0): Diagnostic[] {
  if (diagnostics.length <= MAX_REPORTED_PROBLEMS && omitted === 0) return diagnostics;
  const shown = diagnostics.slice(0, MAX_REPORTED_PROBLEMS);
  const more = diagnostics.length - shown.length + omitted;
  // No path and no line: printed as `FILE: N more problems not shown`, after the others.
  return [...shown, diagnostic(Code.CONFIG_SCHEMA, [], `${more} more problem${more === 1 ? '' : 's'} not shown`)];
}

/**
 * Every error at once: the semantic checks still run on a document with schema errors, and report what
 * they find outside the parts the schema already rejected. They may trip over a value of the wrong type;
 * then the schema's report stands alone.
 */
function semanticErrorsDespite(doc: unknown, schemaErrors: readonly Diagnostic[]): Diagnostic[] {
  // A path is covered when it is, is inside or contains a path the schema reported. Sets of every prefix
  // keep this linear: a file with thousands of bad backends used to compare every pair.
  const covered = new Set<string>();
  const coveredPrefixes = new Set<string>();
  for (const d of schemaErrors) {
    covered.add(formatPath(d.path));
    for (let n = 1; n < d.path.length; n++) coveredPrefixes.add(formatPath(d.path.slice(0, n)));
  }
  const under = (path: readonly PathSegment[]): boolean => {
    if (coveredPrefixes.has(formatPath(path))) return true;
    for (let n = 0; n <= path.length; n++) if (covered.has(formatPath(path.slice(0, n)))) return true;
    return false;
  };
  try {
    return compileConfig(doc as ConfigDoc).diagnostics.filter((d) => d.severity === 'error' && !under(d.path));
  } catch {
    return [];
  }
}

/** What `lb --check FILE`, `lb run FILE` and a reload run: read, parse, validate, compile, resolve. */
export async function loadConfigFile(file: string, opts: PipelineOptions): Promise<PipelineResult> {
  return fromLoaded(loadToml(file), opts);
}

/** The same pipeline on text already in memory (the fuzzer; a config worker that has read the file). */
export async function loadConfigSource(source: string, opts: PipelineOptions): Promise<PipelineResult> {
  return fromLoaded(parseToml(source), opts);
}

function fromLoaded(loaded: LoadResult, opts: PipelineOptions): Promise<PipelineResult> {
  if (!loaded.ok) {
    const exitCode = loaded.unreadable ? Exit.NOINPUT : Exit.CONFIG;
    return Promise.resolve({ ok: false, exitCode, diagnostics: loaded.diagnostics });
  }
  return buildTable(loaded.doc, opts, loaded.locator);
}
