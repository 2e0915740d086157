// Stage 2 of the config pipeline: JSON Schema validation (ajv), every error at once, defaults filled in.

import { Ajv, type ErrorObject } from 'ajv';
import schema from '../../schemas/lb.schema.json' with { type: 'json' };
import { Code } from '../errors.ts';
import { diagnostic, type Diagnostic } from './diagnostics.ts';
import { MAX_REPORTED_PROBLEMS } from './limits.ts';
import type { PathSegment } from './locate.ts';

export { schema };

const ajv = new Ajv({ allErrors: true, useDefaults: true, verbose: true, strict: true, allowUnionTypes: true });
const validateFn = ajv.compile(schema);

/**
 * Validates in place (ajv writes the defaults into `data`) and returns the problems found: at most
 * MAX_REPORTED_PROBLEMS, with `omitted` counting the rest.
 */
export function validateConfig(data: unknown): Diagnostic[] & { omitted?: number } {
  if (validateFn(data)) return [];
  const out: Diagnostic[] & { omitted?: number } = [];
  const errors = validateFn.errors ?? [];
  let shown = 0;
  for (; shown < errors.length && out.length < MAX_REPORTED_PROBLEMS; shown++) {
    const d = toDiagnostic(errors[shown]!);
    if (d) out.push(d);
  }
  const more = errors.slice(shown).filter((e) => e.keyword !== 'if').length;
  if (more > 0) out.omitted = more;
  return out;
}

function pointerToPath(pointer: string): PathSegment[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((raw) => raw.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((seg) => (/^\d+$/.test(seg) ? Number(seg) : seg));
}

/** A value quoted for a message, cut short: a wrong value may be megabytes long. */
function quoteShort(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  if (typeof value === 'object') return 'a table';
  if (typeof value === 'string') return `the string ${quoteShort(value)}`;
  return `${typeof value} ${String(value)}`;
}

function toDiagnostic(err: ErrorObject): Diagnostic | null {
  const path = pointerToPath(err.instancePath);
  const p = err.params as Record<string, unknown>;
  switch (err.keyword) {
    case 'if':
      return null; // the `then` branch reports the real problem
    case 'additionalProperties': {
      const key = String(p.additionalProperty);
      const known = Object.keys((err.parentSchema as { properties?: object }).properties ?? {});
      const hint = closest(key, known);
      const message = `unknown key "${key}"` + (hint ? `; did you mean "${hint}"?` : known.length ? ` (known keys: ${known.join(', ')})` : '');
      return diagnostic(Code.CONFIG_UNKNOWN_KEY, [...path, key], message);
    }
    case 'required':
      return diagnostic(Code.CONFIG_SCHEMA, path, `missing required key "${String(p.missingProperty)}"`);
    case 'type': {
      const want = String(p.type).replace(',', ' or ');
      return diagnostic(Code.CONFIG_SCHEMA, path, `must be ${want}, not ${describe(err.data)}`);
    }
    case 'enum': {
      const allowed = (p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ');
      return diagnostic(Code.CONFIG_VALUE, path, `must be one of ${allowed}, not ${quoteShort(err.data)}`);
    }
    case 'minimum':
      return diagnostic(Code.CONFIG_VALUE, path, `must be >= ${String(p.limit)}, not ${String(err.data)}`);
    case 'minItems':
      return diagnostic(Code.CONFIG_SCHEMA, path, `must have at least ${String(p.limit)} entr${p.limit === 1 ? 'y' : 'ies'}`);
    case 'minProperties':
      return diagnostic(Code.CONFIG_SCHEMA, path, `must define at least ${String(p.limit)} entr${p.limit === 1 ? 'y' : 'ies'}`);
    case 'minLength':
      return diagnostic(Code.CONFIG_VALUE, path, 'must not be empty');
    default:
      return diagnostic(Code.CONFIG_SCHEMA, path, err.message ?? err.keyword);
  }
}

/** The known key nearest to a misspelt one, if it is near enough to be what was meant. */
export function closest(word: string, candidates: readonly string[]): string | null {
  // No key is near a word this long, and the edit distance costs its length times each key's.
  if (word.length > 64) return null;
  let best: string | null = null;
  let bestDist = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDist) {
      bestDist = d;
      best = c;
    }
  }
  return best !== null && bestDist <= Math.max(1, Math.floor(best.length / 3)) ? best : null;
}

/** Edit distance counting a swap of two neighbouring letters as one edit ("prot" → "port"). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i]);
  for (let j = 0; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}
