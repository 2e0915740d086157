// The config pipeline: load → validate → compile → resolve → deep-freeze.
//
// `lb --check` runs exactly these stages; `lb run` runs them and only then binds anything, so a bad
// config never leaves a half-started process behind (balance bound and daemonised before parsing).

import { Exit } from '../errors.ts';
import { compileConfig } from './compile.ts';
import { placeDiagnostics, type Diagnostic } from './diagnostics.ts';
import type { ConfigDoc } from './doc.ts';
import { loadToml } from './load.ts';
import { formatPath, Locator } from './locate.ts';
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
    return { ok: false, exitCode: Exit.CONFIG, diagnostics: placeDiagnostics(diagnostics, locator) };
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
    return { ok: false, exitCode: Exit.CONFIG, diagnostics };
  }
  return { ok: true, table: deepFreeze(table), doc: validDoc, warnings: diagnostics };
}

/**
 * Every error at once: the semantic checks still run on a document with schema errors, and report what
 * they find outside the parts the schema already rejected. They may trip over a value of the wrong type;
 * then the schema's report stands alone.
 */
function semanticErrorsDespite(doc: unknown, schemaErrors: readonly Diagnostic[]): Diagnostic[] {
  const covered = schemaErrors.map((d) => formatPath(d.path));
  const under = (path: string): boolean =>
    covered.some((c) => path === c || path.startsWith(c + '.') || path.startsWith(c + '[') || c.startsWith(path + '.') || c.startsWith(path + '['));
  try {
    return compileConfig(doc as ConfigDoc).diagnostics.filter((d) => d.severity === 'error' && !under(formatPath(d.path)));
  } catch {
    return [];
  }
}

export async function loadConfigFile(file: string, opts: PipelineOptions): Promise<PipelineResult> {
  const loaded = loadToml(file);
  if (!loaded.ok) {
    return { ok: false, exitCode: loaded.unreadable ? Exit.NOINPUT : Exit.CONFIG, diagnostics: loaded.diagnostics };
  }
  return buildTable(loaded.doc, opts, new Locator(loaded.source));
}
