// Parsers for the value syntaxes of the config: durations, addresses, ports, balance's backend strings.
// Each returns a value or an error message (no throwing), so the compiler can collect every problem.

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };
const ok = <T>(value: T): Parsed<T> => ({ ok: true, value });
const fail = <T>(error: string): Parsed<T> => ({ ok: false, error });

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
// Units largest first, each at most once: "1h30m" and "1m30s", not "30s1m" or "5s5s".
const DURATION = /^(?=\d)(?:\d+(?:\.\d+)?d)?(?:\d+(?:\.\d+)?h)?(?:\d+(?:\.\d+)?m(?!s))?(?:\d+(?:\.\d+)?s)?(?:\d+(?:\.\d+)?ms)?$/;
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/g;

/** "250ms", "5s", "1m30s", "0"; a TOML integer is seconds (balance's -t/-T are seconds). */
export function parseDuration(input: string | number): Parsed<number> {
  if (typeof input === 'number') {
    return Number.isInteger(input) && input >= 0 ? ok(input * 1000) : fail(`invalid duration ${input}`);
  }
  const text = input.trim();
  if (text === '0') return ok(0);
  if (!DURATION.test(text)) {
    return fail(`invalid duration "${input}" (use e.g. "250ms", "5s", "2m", "1h" or "0")`);
  }
  let ms = 0;
  for (const m of text.matchAll(DURATION_PART)) ms += Number(m[1]) * UNIT_MS[m[2]!]!;
  return ok(Math.round(ms));
}

/** Formats milliseconds the way the config accepts them back ("1500ms", "5s", "2m"). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

let services: Map<string, number> | null = null;
/** /etc/services (tcp) — what balance's getservbyname saw. Read once, lazily. */
function serviceTable(): Map<string, number> {
  if (services) return services;
  services = new Map();
  let text = '';
  try {
    text = readFileSync('/etc/services', 'utf8');
  } catch {
    return services;
  }
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const [name, portProto, ...aliases] = line.split(/\s+/);
    const m = /^(\d+)\/tcp$/.exec(portProto ?? '');
    if (!name || !m) continue;
    for (const n of [name, ...aliases]) if (!services.has(n)) services.set(n, Number(m[1]));
  }
  return services;
}

/** A port number or a tcp service name. `min` is 0 for listeners (0 = any free port) and 1 for backends. */
export function parsePort(input: string | number, min = 1): Parsed<number> {
  if (typeof input === 'number' || /^\d+$/.test(input)) {
    const port = Number(input);
    if (!Number.isInteger(port) || port < min || port > 65535) {
      return fail(`port ${input} out of range (${min}-65535)`);
    }
    return ok(port);
  }
  if (input === '') return fail('empty port');
  const port = serviceTable().get(input);
  return port === undefined ? fail(`unknown service name "${input}" (not in /etc/services)`) : ok(port);
}

/** IPv6 literals are written in brackets wherever a port can follow. */
export function formatHostPort(host: string | null, port: number): string {
  if (host === null) return `:${port}`;
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Splits "[v6]rest" / "host rest" at the first colon outside brackets. */
function splitHost(text: string): Parsed<{ host: string; rest: string | null }> {
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end < 0) return fail(`unterminated "[" in "${text}"`);
    const host = text.slice(1, end);
    if (isIP(host) !== 6) return fail(`"${host}" in brackets is not an IPv6 address`);
    const after = text.slice(end + 1);
    if (after !== '' && !after.startsWith(':')) return fail(`unexpected "${after}" after "]"`);
    return ok({ host, rest: after === '' ? null : after.slice(1) });
  }
  const colon = text.indexOf(':');
  if (colon < 0) return ok({ host: text, rest: null });
  const rest = text.slice(colon + 1);
  if (isIP(text) === 6 || text.includes('::') && rest.split(':').length > 2) {
    return fail(`IPv6 address "${text}" must be written in brackets, e.g. "[::1]:143"`);
  }
  return ok({ host: text.slice(0, colon), rest });
}

/** Listener / control addresses: "host:port", "[v6]:port", ":port", "port", "service" or a number. */
export function parseListenAddress(input: string | number): Parsed<{ host: string | null; port: number }> {
  if (typeof input === 'number' || !input.includes(':')) {
    const port = parsePort(input, 0);
    return port.ok ? ok({ host: null, port: port.value }) : port;
  }
  const split = splitHost(input);
  if (!split.ok) return split;
  const { host, rest } = split.value;
  if (rest === null) return fail(`missing port in "${input}"`);
  const port = parsePort(rest, 0);
  if (!port.ok) return port;
  return ok({ host: host === '' || host === '*' ? null : host, port: port.value });
}

export interface BackendSpec {
  host: string;
  port: number | null;
  maxc: number | null;
}

/** balance's channel syntax `host[:port[:maxc]]`, plus `[v6][:port[:maxc]]` and `host::maxc`. */
export function parseBackendString(input: string): Parsed<BackendSpec> {
  const split = splitHost(input.trim());
  if (!split.ok) return split;
  const { host, rest } = split.value;
  if (host === '') return fail(`missing host in "${input}"`);
  const [portText, maxcText, extra] = rest === null ? [] : rest.split(':');
  if (extra !== undefined) return fail(`too many ":" in "${input}" (expected host[:port[:maxc]])`);
  let port: number | null = null;
  if (portText !== undefined && portText !== '') {
    const p = parsePort(portText);
    if (!p.ok) return fail(`${p.error} in "${input}"`);
    port = p.value;
  }
  let maxc: number | null = null;
  if (maxcText !== undefined) {
    if (!/^\d+$/.test(maxcText)) return fail(`invalid maxc "${maxcText}" in "${input}" (a whole number >= 0)`);
    maxc = Number(maxcText);
  }
  return ok({ host, port, maxc });
}
