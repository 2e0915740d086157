// One problem found in a config, in the shape `lb --check` prints: `FILE:LINE:COL: PATH: message`.

import type { ErrorCode } from '../errors.ts';
import { formatPath, type Locator, type PathSegment } from './locate.ts';

export interface Diagnostic {
  readonly severity: 'error' | 'warning';
  readonly code: ErrorCode;
  readonly path: readonly PathSegment[];
  readonly message: string;
  line?: number;
  col?: number;
}

export function diagnostic(
  code: ErrorCode,
  path: readonly PathSegment[],
  message: string,
  severity: Diagnostic['severity'] = 'error',
): Diagnostic {
  return { severity, code, path, message };
}

/** Fills in line/column from the source text for diagnostics that only know their key path. */
export function placeDiagnostics(list: Diagnostic[], locator: Locator | null): Diagnostic[] {
  if (!locator) return list;
  for (const d of list) {
    if (d.line !== undefined) continue;
    const pos = locator.find(d.path);
    if (pos) {
      d.line = pos.line;
      d.col = pos.col;
    }
  }
  return list.sort((a, b) => (a.line ?? Infinity) - (b.line ?? Infinity) || (a.col ?? 0) - (b.col ?? 0));
}

export function formatDiagnostic(file: string, d: Diagnostic): string {
  const where = d.line === undefined ? file : d.col === undefined ? `${file}:${d.line}` : `${file}:${d.line}:${d.col}`;
  const path = d.path.length ? `${formatPath(d.path)}: ` : '';
  const level = d.severity === 'warning' ? 'warning: ' : '';
  return `${where}: ${path}${level}${d.message} [${d.code}]`;
}
