// Mutable runtime state beside the frozen routing table: connection counts, counters, ejection.
//
// The table says what the operator configured; this says what is happening. A table swap keeps the state
// of every backend whose identity survives (listener, group, host:port), so counters stay monotonic for
// the process lifetime — MRTG misreads a counter that goes backwards.

import type { BackendEntry, GroupEntry, ListenerEntry } from '../config/table.ts';
import { HealthTracker } from '../health/state.ts';

/**
 * Something that carries bytes right now; its counts are added to the totals when it finishes. It also
 * carries the links of the lists it is on (its listener's, its backend's, its listener's connecting
 * list), so being on a list costs no allocation: at thousands of connections a second, a Set's entries
 * and rehashing showed up in the connection rate, and kept short-lived objects alive across scavenges.
 */
export interface LiveFlow {
  sentBytes(): number;
  rcvdBytes(): number;
  prevL: LiveFlow | null;
  nextL: LiveFlow | null;
  prevB: LiveFlow | null;
  nextB: LiveFlow | null;
  prevC: LiveFlow | null;
  nextC: LiveFlow | null;
}

type Link = 'L' | 'B' | 'C';

/** A doubly linked list threaded through the flows' own `prevX`/`nextX` fields (X = the list's link). */
export class FlowList<F extends LiveFlow = LiveFlow> implements Iterable<F> {
  size = 0;
  private head: F | null = null;
  private tail: F | null = null;
  private readonly prev: `prev${Link}`;
  private readonly next: `next${Link}`;

  constructor(link: Link) {
    this.prev = `prev${link}`;
    this.next = `next${link}`;
  }

  /** Appends (so iteration is oldest first). */
  add(f: F): void {
    f[this.prev] = this.tail;
    f[this.next] = null;
    if (this.tail) this.tail[this.next] = f;
    else this.head = f;
    this.tail = f;
    this.size++;
  }

  /** Removes; false when the flow was not on this list. */
  delete(f: F): boolean {
    const prev = f[this.prev] as F | null;
    const next = f[this.next] as F | null;
    if (prev === null && this.head !== f) return false;
    if (prev) prev[this.next] = next;
    else this.head = next;
    if (next) next[this.prev] = prev;
    else this.tail = prev;
    f[this.prev] = null;
    f[this.next] = null;
    this.size--;
    return true;
  }

  first(): F | null {
    return this.head;
  }

  *[Symbol.iterator](): Iterator<F> {
    for (let f = this.head; f !== null; ) {
      const next = f[this.next] as F | null; // read first: the caller may remove f
      yield f;
      f = next;
    }
  }
}

/** Byte and connection counters shared by backends and listeners. */
export class Counters {
  /** Connections open right now. */
  cur = 0;
  /** Highest `cur` seen. */
  max = 0;
  /** Connections relayed to the end or still relaying (successful connects / accepted clients). */
  total = 0;
  private closedSent = 0;
  private closedRcvd = 0;
  private baseSent = 0;
  private baseRcvd = 0;
  readonly live: FlowList;

  constructor(link: 'L' | 'B') {
    this.live = new FlowList(link);
  }

  open(flow: LiveFlow): void {
    this.live.add(flow);
  }

  close(flow: LiveFlow): void {
    if (this.live.delete(flow)) {
      this.closedSent += flow.sentBytes();
      this.closedRcvd += flow.rcvdBytes();
    }
  }

  /** Bytes client→backend (balance's `sent`), finished plus in-flight connections. */
  sent(): number {
    let n = this.closedSent;
    for (const f of this.live) n += f.sentBytes();
    return n - this.baseSent;
  }

  /** Bytes backend→client (balance's `rcvd`). */
  rcvd(): number {
    let n = this.closedRcvd;
    for (const f of this.live) n += f.rcvdBytes();
    return n - this.baseRcvd;
  }

  /** Operator `reset`: byte counters restart from zero (current connections are facts, not counters). */
  resetBytes(): void {
    this.baseSent += this.sent();
    this.baseRcvd += this.rcvd();
  }
}

export const BACKOFF_START_MS = 1000;
export const BACKOFF_MAX_MS = 30_000;

export class BackendState extends Counters {
  constructor() {
    super('B');
  }

  /** Times chosen (first tries and failover tries): balance's `totalc`, HAProxy's `lbtot`. */
  attempts = 0;
  /** Connects that failed (refused, timeout, unreachable): HAProxy's `econ`. */
  failures = 0;
  /** Passive ejection: not chosen before this time (ms since epoch). */
  ejectedUntil = 0;
  backoffMs = 0;
  /** After a back-off, one connection probes the backend; others skip it until that probe ends. */
  probing = false;
  /** `autodisable` (balance -a): down until an operator enables it. Shown as `dis`. */
  autoDisabled = false;
  /** Active health checks (and data-path connect failures when checks are configured). */
  readonly check = new HealthTracker();
  /** `drain`: no new connections; running ones go on. */
  draining = false;
  lastChange = Date.now();
  lastFailure = '';

  resetCounters(): void {
    this.attempts = 0;
    this.total = 0;
    this.failures = 0;
    this.resetBytes();
  }

  /** True when the backend is down for health reasons (not full, not operator-disabled). */
  isDown(now: number): boolean {
    return this.autoDisabled || !this.check.up || this.draining || this.ejectedUntil > now || this.probing;
  }

  /** A connect to this backend failed: eject it for a doubling back-off so later clients skip it. */
  connectFailed(now: number, reason: string, autodisable: boolean): void {
    this.failures++;
    this.probing = false;
    this.lastFailure = reason;
    if (autodisable) {
      if (!this.autoDisabled) this.lastChange = now;
      this.autoDisabled = true;
      return;
    }
    this.backoffMs = this.backoffMs === 0 ? BACKOFF_START_MS : Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    if (this.ejectedUntil === 0) this.lastChange = now;
    this.ejectedUntil = now + this.backoffMs;
  }

  connectSucceeded(now: number): void {
    this.probing = false;
    if (this.ejectedUntil !== 0) this.lastChange = now;
    this.ejectedUntil = 0;
    this.backoffMs = 0;
  }

  /** Called when the backend is picked: the first pick after a back-off becomes the probe. */
  picked(): void {
    this.attempts++;
    if (this.ejectedUntil !== 0) this.probing = true;
  }

  /** Operator `enable`: clears what autodisable, drain or ejection set, so the backend is tried at once. */
  operatorEnabled(now: number): void {
    this.autoDisabled = false;
    this.draining = false;
    this.ejectedUntil = 0;
    this.backoffMs = 0;
    this.probing = false;
    this.lastChange = now;
  }
}

export class GroupState {
  /** Round robin: index to start the next scan at (one past the backend last chosen). */
  cursor = 0;
  /** Smooth weighted round robin: current weight per backend (nginx's algorithm). */
  swrr: number[] = [];
  backends: BackendState[];
  constructor(backends: BackendState[]) {
    this.backends = backends;
  }
}

/** A client waiting in a listener's queue for a backend slot. */
export interface Waiter {
  readonly queuedAt: number;
}

export class ListenerState extends Counters {
  constructor() {
    super('L');
  }

  /** Clients closed because no backend was usable (or every candidate failed). */
  noBackend = 0;
  groups: GroupState[] = [];
  /** FIFO of clients waiting for a slot (listeners with a queue section). */
  readonly queue: Waiter[] = [];
  /** Longest the queue has been. */
  queueMax = 0;
  /** Waiters that gave up: timed out, left, or found the queue full. */
  queueTimeouts = 0;
  queueAbandoned = 0;
  queueRejected = 0;
}

function backendIdentity(listener: string, group: number, entry: BackendEntry, ordinal: number): string {
  return `${listener}\u0000${group}\u0000${entry.key}\u0000${ordinal}`;
}

/**
 * Builds the state for a (new) listener entry, reusing backend states whose identity survives: the same
 * listener, group index and host:port. A backend that moved or is new starts from zero.
 */
export function rebuildListenerState(entry: ListenerEntry, previous: ListenerState | null): ListenerState {
  const state = previous ?? new ListenerState();
  const old = new Map<string, BackendState>();
  previous?.groups.forEach((g, gi) => {
    const seen = new Map<string, number>();
    const entryGroup = previousEntries.get(previous)?.[gi];
    g.backends.forEach((b, bi) => {
      const be = entryGroup?.backends[bi];
      if (!be) return;
      const n = seen.get(be.key) ?? 0;
      seen.set(be.key, n + 1);
      old.set(backendIdentity(entry.name, gi, be, n), b);
    });
  });
  const groups = entry.groups.map((g, gi) => {
    const seen = new Map<string, number>();
    const backends = g.backends.map((be) => {
      const n = seen.get(be.key) ?? 0;
      seen.set(be.key, n + 1);
      return old.get(backendIdentity(entry.name, gi, be, n)) ?? new BackendState();
    });
    const gs = new GroupState(backends);
    const prevGroup = previous?.groups[gi];
    if (prevGroup) gs.cursor = prevGroup.cursor % Math.max(1, backends.length);
    return gs;
  });
  state.groups = groups;
  previousEntries.set(state, entry.groups);
  return state;
}

/** The group entries a state was last built for, to match old states to new entries on a swap. */
const previousEntries = new WeakMap<ListenerState, readonly GroupEntry[]>();
