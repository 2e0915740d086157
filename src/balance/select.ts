// Choosing a backend for a client: pure and synchronous, no sockets.
//
// Groups are walked in order (group 0 first; later groups are failover tiers). Within a group the policy
// picks among *usable* backends: enabled by the operator, not down (health, autodisable, passive
// ejection), below maxc, weight > 0, and not already tried for this client. A group with nothing usable
// passes the client to the next group.

import type { BackendEntry, GroupEntry, ListenerEntry } from '../config/table.ts';
import type { BackendState, GroupState, ListenerState } from './state.ts';

export interface Choice {
  readonly group: number;
  readonly index: number;
  readonly entry: BackendEntry;
  readonly state: BackendState;
}

/** Why a backend cannot take a new connection right now (null = usable). */
export type Unusable = 'disabled' | 'down' | 'full' | 'drained' | 'tried';

export function unusable(
  entry: BackendEntry,
  st: BackendState,
  now: number,
  tried: readonly number[] | null,
): Unusable | null {
  if (!entry.enabled) return 'disabled';
  if (entry.resolveError !== undefined || st.isDown(now)) return 'down';
  if (entry.weight === 0) return 'drained';
  if (entry.maxc > 0 && st.cur >= entry.maxc) return 'full';
  if (tried !== null && tried.includes(st.slot)) return 'tried';
  return null;
}

/**
 * The backend for a client, with one of its connection slots taken (release it when the connection
 * ends), or null when no group has a usable one. `tried` holds the backends that already failed for
 * this client, so a failover retry moves on instead of repeating them.
 */
export function chooseBackend(
  listener: ListenerEntry,
  state: ListenerState,
  clientIp: string,
  now: number,
  tried: readonly number[] | null = null,
  random: () => number = Math.random,
): Choice | null {
  for (let g = 0; g < listener.groups.length; g++) {
    const group = listener.groups[g]!;
    const gs = state.groups[g];
    if (!gs || group.backends.length === 0) continue;
    const index = pickInGroup(group, gs, listener.hashFailover, clientIp, now, tried, random);
    if (index >= 0) return { group: g, index, entry: group.backends[index]!, state: gs.backends[index]! };
  }
  return null;
}

/**
 * True when waiting can help: some backend would take the client but is at its maxc. A client is queued
 * only then; when everything is down (or disabled) it is closed at once, as balance did.
 */
export function someBackendFull(listener: ListenerEntry, state: ListenerState, now: number): boolean {
  return listener.groups.some((g, gi) =>
    g.backends.some((b, bi) => {
      const st = state.groups[gi]?.backends[bi];
      return st !== undefined && unusable(b, st, now, null) === 'full';
    }),
  );
}

/**
 * Picks a usable backend of the group and takes one of its connection slots (a compare-and-swap on the
 * shared count, so maxc holds across workers); -1 when none is usable. A backend that fills up between
 * the look and the claim is passed over like a full one.
 */
export function pickInGroup(
  group: GroupEntry,
  gs: GroupState,
  hashFailover: boolean,
  clientIp: string,
  now: number,
  tried: readonly number[] | null,
  random: () => number,
): number {
  const list = group.backends;
  const n = list.length;
  // Plain functions, not closures: this runs for every new connection.
  const ok = usableIn;
  const take = claimIn;
  switch (group.policy) {
    case 'rr': {
      // Continue after the backend last *chosen* (balance continued after the last *successful* one, so a
      // dead backend right after it was every new client's first try). Each client takes the next turn
      // of the group's shared counter, so clients go round in order whichever worker accepts them, even
      // at the same moment; one that skips unusable backends moves the counter past what it skipped.
      const turn = gs.shared.takeTurn(gs.slot);
      const start = ((turn % n) + n) % n;
      for (let k = 0; k < n; k++) {
        const i = (start + k) % n;
        if (ok(list, gs, i, now, tried) && take(list, gs, i)) {
          if (k > 0) gs.shared.advanceCursor(gs.slot, turn + 1, turn + 1 + k);
          return i;
        }
      }
      return -1;
    }
    case 'first':
      for (let i = 0; i < n; i++) if (ok(list, gs, i, now, tried) && take(list, gs, i)) return i;
      return -1;
    case 'hash': {
      // hashOrder's order, without sorting: the address is hashed once, each backend's score is one pass,
      // and the best left is found again only when the one before it could not be used (hash_failover).
      // At 10,000 backends a sort cost 3.6 ms a connection.
      if (gs.hashScores.length !== n) gs.hashScores = new Float64Array(n);
      const scores = gs.hashScores;
      const prefix = hashPrefix(clientIp);
      for (let i = 0; i < n; i++) scores[i] = hashContinue(prefix, list[i]!.key);
      for (let pass = 0; pass < HASH_PASSES; pass++) {
        let best = -1;
        for (let i = 0; i < n; i++) if (scores[i]! >= 0 && (best < 0 || scores[i]! > scores[best]!)) best = i;
        if (best < 0) return -1;
        if (ok(list, gs, best, now, tried) && take(list, gs, best)) return best;
        if (!hashFailover) return -1;
        scores[best] = -1;
      }
      // Many unusable in a row (a group mostly down): the rest in order, sorted once.
      const rest: number[] = [];
      for (let i = 0; i < n; i++) if (scores[i]! >= 0) rest.push(i);
      rest.sort((a, b) => scores[b]! - scores[a]! || a - b);
      for (const i of rest) if (ok(list, gs, i, now, tried) && take(list, gs, i)) return i;
      return -1;
    }
    case 'leastconn': {
      // Fewest connections (all workers) per unit of weight; ties go round robin so equal backends share
      // new clients. A lost race for the best one's last slot tries again.
      for (let attempt = 0; attempt < n; attempt++) {
        const start = gs.cursor;
        let best = -1;
        let bestLoad = Infinity;
        for (let k = 0; k < n; k++) {
          const i = (start + k) % n;
          if (!ok(list, gs, i, now, tried)) continue;
          const load = gs.backends[i]!.cur / list[i]!.weight;
          if (load < bestLoad) {
            bestLoad = load;
            best = i;
          }
        }
        if (best < 0) return -1;
        if (take(list, gs, best)) {
          gs.shared.advanceCursor(gs.slot, start, (best + 1) % n);
          return best;
        }
      }
      return -1;
    }
    case 'weighted': {
      // Smooth weighted round robin (nginx), per worker: spreads a heavy backend's turns instead of bunching them.
      if (gs.swrr.length !== n) gs.swrr = new Array<number>(n).fill(0);
      let best = -1;
      let total = 0;
      for (let i = 0; i < n; i++) {
        if (!ok(list, gs, i, now, tried)) continue;
        const w = list[i]!.weight;
        gs.swrr[i]! += w;
        total += w;
        if (best < 0 || gs.swrr[i]! > gs.swrr[best]!) best = i;
      }
      if (best < 0) return -1;
      gs.swrr[best]! -= total;
      if (take(list, gs, best)) return best;
      for (let i = 0; i < n; i++) if (i !== best && ok(list, gs, i, now, tried) && take(list, gs, i)) return i;
      return -1;
    }
    case 'random': {
      let count = 0;
      for (let i = 0; i < n; i++) if (ok(list, gs, i, now, tried)) count++;
      if (count === 0) return -1;
      let pick = Math.floor(random() * count);
      for (let i = 0; i < n; i++) {
        if (ok(list, gs, i, now, tried) && pick-- === 0) {
          if (take(list, gs, i)) return i;
          break;
        }
      }
      for (let i = 0; i < n; i++) if (ok(list, gs, i, now, tried) && take(list, gs, i)) return i;
      return -1;
    }
  }
}

function usableIn(list: readonly BackendEntry[], gs: GroupState, i: number, now: number, tried: readonly number[] | null): boolean {
  return unusable(list[i]!, gs.backends[i]!, now, tried) === null;
}

function claimIn(list: readonly BackendEntry[], gs: GroupState, i: number): boolean {
  return gs.backends[i]!.claim(list[i]!.maxc);
}

/** `::ffff:10.0.0.1` → `10.0.0.1`, so a client hashes alike on IPv4 and dual-stack listeners. */
export function normaliseClientIp(ip: string): string {
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}

/**
 * Rendezvous (highest random weight) hashing: every backend gets a score from (client IP, backend
 * host:port) and the client goes to the highest. Adding or removing one of N backends moves only the
 * clients whose top score changes (about 1/N), and the scores depend on nothing but those strings, so
 * every `lb` instance and every restart maps a client the same way.
 */
export function hashScore(clientIp: string, backendKey: string): number {
  return hashContinue(hashPrefix(clientIp), backendKey);
}

/** How many times the hash policy looks for the next best backend before it sorts the rest. */
const HASH_PASSES = 8;

/** FNV-1a 32-bit over "ip|": the part of a score that is the same for every backend. */
function hashPrefix(clientIp: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < clientIp.length; i++) {
    h ^= clientIp.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= 0x7c; // '|'
  return Math.imul(h, 0x01000193);
}

/** The FNV-1a over "ip|host:port" continued from hashPrefix, then murmur3's finaliser to spread the bits. */
function hashContinue(prefix: number, backendKey: string): number {
  let h = prefix;
  for (let i = 0; i < backendKey.length; i++) {
    h ^= backendKey.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Backend indexes in descending score order for this client (ties: lower index first). */
export function hashOrder(clientIp: string, backends: readonly BackendEntry[]): number[] {
  const scores = backends.map((b) => hashScore(clientIp, b.key));
  return scores.map((_, i) => i).sort((a, b) => scores[b]! - scores[a]! || a - b);
}
