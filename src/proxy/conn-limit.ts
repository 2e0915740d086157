// `[global] maxconn`: how many connections lb holds at most, across its workers, as HAProxy's maxconn.
//
// The count lives in the shared state (SharedState.conns). Listeners the addon accepts for take a place
// before each accept4() and, at the limit, stop being polled: clients wait in the kernel's backlog and
// are accepted as places come back (native/lb_splice.c, limit_*). Listeners Node accepts for cannot stop
// polling: a client beyond the limit is closed at once and counted (ListenerRuntime.accept). A place
// given back in JS wakes the addon threads that paused (limitWake), as does a higher maxconn.

import { readFileSync } from 'node:fs';
import { loadAddon } from '../addon.ts';
import type { SharedState } from '../shared/state.ts';

/**
 * Descriptors kept out of the default's reach: listening sockets, health checks, the control and HTTP
 * ports and their clients, log files, DNS, the pipe pool, Node's own.
 */
export const MAXCONN_RESERVE = 256;
/**
 * Descriptors per connection the default allows for: the client and backend sockets, and a pipe pair
 * for one in two connections (a connection holds pipes only while bytes are in them), as HAProxy
 * sizes maxsock (maxconn × 2 + maxpipes × 2, maxpipes = maxconn / 4).
 */
export const FDS_PER_CONN = 2.5;

/** The default maxconn for a descriptor limit of `nofile`. */
export function defaultMaxconn(nofile: number): number {
  return Math.max(1, Math.floor((nofile - MAXCONN_RESERVE) / FDS_PER_CONN));
}

/**
 * This process's soft RLIMIT_NOFILE (Node raises it to the hard limit at start), from /proc/self/limits;
 * null where that cannot be read (then the default is no limit).
 */
export function openFileLimit(text?: string): number | null {
  let limits = text;
  if (limits === undefined) {
    try {
      limits = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return null;
    }
  }
  const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(limits);
  if (!m || m[1] === 'unlimited') return null;
  return Number(m[1]);
}

/** The limit in force: the configured one, else derived from the descriptor limit (0: none). */
export function effectiveMaxconn(configured: number | null, nofile = openFileLimit()): number {
  if (configured !== null) return configured;
  return nofile === null ? 0 : defaultMaxconn(nofile);
}

/** Wakes the addon threads paused at `shared`'s limit (a place came back, or the limit was raised). */
export function wakeLimited(shared: SharedState): void {
  const addon = loadAddon();
  if (!addon.ok) return; // no addon: no thread can be paused
  const wake = addon.exports['limitWake'];
  if (typeof wake === 'function') (wake as (limit: Int32Array) => void)(shared.conns);
}
