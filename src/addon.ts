// The compiled addon (native/lb_splice.c), loaded once per thread, or why it is not there.
//
// Its absence is normal (no compiler at install): every user of it has a fallback and says which one it
// runs. It is loaded with process.dlopen once per thread and kept on globalThis, so that a module
// evaluated twice in one thread (a test runner's isolation, a second bundle) gets the same instance:
// a second dlopen would re-run the addon's init and replace its per-thread state.
//
// LB_NATIVE=off runs without it altogether (as a machine without a compiler does); LB_SPLICE=off only
// turns off the relay (src/proxy/splice.ts).

import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { addonPath } from './entries.ts';

/** The addon's exports; each user reads the functions it needs (an older build may lack a newer one). */
export type AddonExports = Readonly<Record<string, unknown>>;

export type AddonLoad = { ok: true; exports: AddonExports } | { ok: false; reason: string };

const SHARED = Symbol.for('lb.addon');
type WithShared = typeof globalThis & { [SHARED]?: AddonLoad };

function load(): AddonLoad {
  if (process.env['LB_NATIVE'] === 'off') return { ok: false, reason: 'turned off (LB_NATIVE=off)' };
  if (process.platform !== 'linux') return { ok: false, reason: `the addon is Linux only (${process.platform})` };
  const path = fileURLToPath(addonPath());
  const mod: { exports: AddonExports } = { exports: {} };
  try {
    // process.dlopen rather than require(): bundlers leave it alone, and the path is computed anyway.
    process.dlopen(mod, path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (/cannot open shared object file: No such file/.test(e.message)) return { ok: false, reason: `addon not built (${path} missing)` };
    return { ok: false, reason: `addon not loadable: ${e.message.split('\n')[0]}` };
  }
  return { ok: true, exports: mod.exports };
}

/** This thread's addon, loaded on first use. */
export function loadAddon(): AddonLoad {
  const g = globalThis as WithShared;
  return (g[SHARED] ??= load());
}

let errnoNames: Map<number, string> | null = null;

/** The name of an errno the addon reports (`ECONNRESET`); null for 0. */
export function errnoName(n: number): string | null {
  if (n === 0) return null;
  errnoNames ??= new Map(Object.entries(constants.errno).map(([k, v]) => [v, k]));
  return errnoNames.get(n) ?? `errno ${n}`;
}
