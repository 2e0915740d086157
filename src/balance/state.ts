// Runtime state beside the frozen routing table, as this thread sees it: views over the shared memory.
//
// The table says what the operator configured; the shared state (src/shared/state.ts) says what is
// happening in every worker at once. These objects are thin views: a BackendState reads its backend's
// global connection count and health from the shared slot, adds its own thread's counts to its own
// region, and keeps the list of this thread's open connections (to publish their bytes while they run).
// A view is made per table; the slot behind it survives reloads (src/shared/slots.ts), so counters stay
// monotonic for the life of the process — MRTG misreads a counter that goes backwards.

import type { CheckStatus } from '../health/state.ts';
import type { ListenerSlots } from '../shared/slots.ts';
import {
  FLAG_AUTODISABLED,
  FLAG_CHECK_DOWN,
  FLAG_DRAINING,
  FLAG_PROBING,
  WB_TOTAL,
  WL_NO_BACKEND,
  WL_QUEUE_ABANDONED,
  WL_QUEUE_REJECTED,
  WL_PROXY_REJECTED,
  WL_QUEUE_TIMEOUTS,
  type SharedState,
} from '../shared/state.ts';

export { BACKOFF_MAX_MS, BACKOFF_START_MS } from '../shared/state.ts';

/**
 * Something that carries bytes right now. It also carries the links of the lists it is on (its
 * listener's, its backend's, its listener's connecting list, the queue), so being on a list costs no
 * allocation: at thousands of connections a second, a Set's entries and rehashing showed up in the
 * connection rate, and kept short-lived objects alive across scavenges.
 */
export interface LiveFlow {
  sentBytes(): number;
  rcvdBytes(): number;
  /** Bytes already published to the shared counters while the flow ran. */
  pubSent: number;
  pubRcvd: number;
  /** The backend slot its bytes count toward, once connected (-1 before). */
  backendSlot: number;
  prevL: LiveFlow | null;
  nextL: LiveFlow | null;
  prevB: LiveFlow | null;
  nextB: LiveFlow | null;
  prevC: LiveFlow | null;
  nextC: LiveFlow | null;
  prevQ: LiveFlow | null;
  nextQ: LiveFlow | null;
}

type Link = 'L' | 'B' | 'C' | 'Q';

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

  /** Puts a flow first (a waiter sent back to the queue keeps its place). */
  unshift(f: F): void {
    f[this.prev] = null;
    f[this.next] = this.head;
    if (this.head) this.head[this.prev] = f;
    else this.tail = f;
    this.head = f;
    this.size++;
  }

  has(f: F): boolean {
    return f[this.prev] !== null || this.head === f;
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

  nextOf(f: F): F | null {
    return f[this.next] as F | null;
  }

  *[Symbol.iterator](): Iterator<F> {
    for (let f = this.head; f !== null; ) {
      const next = f[this.next] as F | null; // read first: the caller may remove f
      yield f;
      f = next;
    }
  }
}

/** One backend, as this thread sees it. `region` is this worker's counter region (-1: read only). */
export class BackendState {
  readonly shared: SharedState;
  readonly slot: number;
  readonly region: number;
  /** This thread's open connections to the backend. */
  readonly live = new FlowList('B');
  /** Why the last connect or check failed (text lives beside the shared numbers, on each side). */
  lastFailure = '';

  constructor(shared: SharedState, slot: number, region: number) {
    this.shared = shared;
    this.slot = slot;
    this.region = region;
  }

  /** Connections open right now, in every worker. */
  get cur(): number {
    return this.shared.cur(this.slot);
  }
  get max(): number {
    return this.shared.maxSeen(this.slot);
  }
  /** Times chosen (first tries and failover tries): balance's `totalc`, HAProxy's `lbtot`. */
  get attempts(): number {
    return this.shared.backendSum(this.slot, 'attempts');
  }
  /** Connects that failed (refused, timeout, unreachable): HAProxy's `econ`. */
  get failures(): number {
    return this.shared.backendSum(this.slot, 'failures');
  }
  /** Connections relayed (successful connects). */
  get total(): number {
    return this.shared.backendSum(this.slot, 'total');
  }
  sent(): number {
    return this.shared.backendSum(this.slot, 'sent');
  }
  rcvd(): number {
    return this.shared.backendSum(this.slot, 'rcvd');
  }
  get autoDisabled(): boolean {
    return (this.shared.flags(this.slot) & FLAG_AUTODISABLED) !== 0;
  }
  get draining(): boolean {
    return (this.shared.flags(this.slot) & FLAG_DRAINING) !== 0;
  }
  get probing(): boolean {
    return (this.shared.flags(this.slot) & FLAG_PROBING) !== 0;
  }
  get ejectedUntil(): number {
    return this.shared.ejectedUntil(this.slot);
  }
  get backoffMs(): number {
    return this.shared.backoffMs(this.slot);
  }
  get lastChange(): number {
    return this.shared.lastChange(this.slot);
  }
  get check(): { up: boolean; failedChecks: number; downTransitions: number; lastStatus: CheckStatus; lastDurationMs: number } {
    return this.shared.checkFields(this.slot);
  }
  get checkUp(): boolean {
    return (this.shared.flags(this.slot) & FLAG_CHECK_DOWN) === 0;
  }

  /** True when the backend is down for health reasons (not full, not operator-disabled). */
  isDown(now: number): boolean {
    return this.shared.isDown(this.slot, now);
  }

  /** Takes a connection slot (false at maxc): done by selection, before connecting. */
  claim(maxc: number): boolean {
    return this.shared.claim(this.slot, maxc, this.region);
  }

  release(): void {
    this.shared.release(this.slot, this.region);
  }

  /** Called when the backend is picked: counts the attempt; the first pick after a back-off probes. */
  picked(): void {
    this.shared.picked(this.slot, this.region);
  }

  /** A connect failed: ejects it for every worker; returns the back-off (0 when autodisabled). */
  connectFailed(now: number, reason: string, autodisable: boolean): number {
    this.lastFailure = reason;
    return this.shared.connectFailed(this.slot, now, autodisable, this.region);
  }

  connectSucceeded(now: number): void {
    this.shared.connectSucceeded(this.slot, now);
    this.shared.addBackend(this.region, this.slot, WB_TOTAL);
  }

  /** Operator `enable`: clears autodisable, drain and ejection; true when that changed anything. */
  operatorEnabled(now: number): boolean {
    return this.shared.operatorEnabled(this.slot, now);
  }

  /** Operator `drain`: no new connections; running ones go on. */
  setDraining(on: boolean, now: number): void {
    this.shared.setDraining(this.slot, on, now);
  }

  /** Operator `reset`: totalc, sent, rcvd and failures restart from zero, for every reader. */
  resetCounters(): void {
    this.shared.resetBackendCounters(this.slot);
  }

  /** Re-pointed (`assign`): the new address has no health history. */
  resetHealth(now: number): void {
    this.shared.resetHealth(this.slot, now);
    this.lastFailure = '';
  }

  /** A relayed connection to it ended: its bytes move from live to closed. */
  closed(flow: LiveFlow): void {
    if (this.live.delete(flow)) {
      this.shared.backendClosed(this.region, this.slot, flow.sentBytes(), flow.rcvdBytes(), flow.pubSent, flow.pubRcvd);
    }
  }
}

export class GroupState {
  readonly shared: SharedState;
  /** Shared slot of the group: its round-robin cursor is one for every worker. */
  readonly slot: number;
  /** Smooth weighted round robin: current weight per backend (nginx's algorithm), per worker. */
  swrr: number[] = [];
  /** The hash policy's scores of the connection being placed (worker-local scratch, reused: no allocation a connection). */
  hashScores: Float64Array = new Float64Array(0);
  backends: BackendState[];
  constructor(shared: SharedState, slot: number, backends: BackendState[]) {
    this.shared = shared;
    this.slot = slot;
    this.backends = backends;
  }
  /** Round robin: index to start the next scan at (one past the backend last chosen). */
  get cursor(): number {
    return this.shared.cursor(this.slot);
  }
}

/** A client waiting in a listener's queue for a backend slot. */
export interface Waiter extends LiveFlow {
  readonly queuedAt: number;
}

export class ListenerState {
  readonly shared: SharedState;
  readonly slot: number;
  readonly region: number;
  groups: GroupState[];
  /** This thread's open clients. */
  readonly live = new FlowList('L');
  /** This thread's waiting clients, oldest ticket first. */
  readonly queue = new FlowList<Waiter>('Q');

  constructor(shared: SharedState, slots: ListenerSlots, region: number, previous: ListenerState | null) {
    this.shared = shared;
    this.slot = slots.slot;
    this.region = region;
    // Views of backends that keep their slot are kept too (with what only this thread knows of them).
    const old = new Map<number, BackendState>();
    const oldGroups = new Map<number, GroupState>();
    for (const g of previous?.groups ?? []) {
      oldGroups.set(g.slot, g);
      for (const b of g.backends) old.set(b.slot, b);
    }
    this.groups = slots.groups.map((g) => {
      const gs = new GroupState(shared, g.slot, g.backends.map((b) => old.get(b) ?? new BackendState(shared, b, region)));
      const prev = oldGroups.get(g.slot);
      if (prev && prev.backends.length === gs.backends.length) gs.swrr = prev.swrr;
      return gs;
    });
    if (previous) {
      for (const f of previous.live) this.live.add(f);
      for (const w of previous.queue) this.queue.add(w);
    }
  }

  get cur(): number {
    return this.shared.listenerCur(this.slot);
  }
  get max(): number {
    return this.shared.listenerMax(this.slot);
  }
  get total(): number {
    return this.shared.listenerSum(this.slot, 'total');
  }
  sent(): number {
    return this.shared.listenerSum(this.slot, 'sent');
  }
  rcvd(): number {
    return this.shared.listenerSum(this.slot, 'rcvd');
  }
  /** Clients closed because no backend was usable (or every candidate failed). */
  get noBackend(): number {
    return this.shared.listenerSum(this.slot, 'noBackend');
  }
  get queued(): number {
    return this.shared.queued(this.slot);
  }
  get queueMax(): number {
    return this.shared.queueMax(this.slot);
  }
  get queueTimeouts(): number {
    return this.shared.listenerSum(this.slot, 'queueTimeouts');
  }
  get queueAbandoned(): number {
    return this.shared.listenerSum(this.slot, 'queueAbandoned');
  }
  get queueRejected(): number {
    return this.shared.listenerSum(this.slot, 'queueRejected');
  }
  /** accept_proxy: clients closed without a valid PROXY header within the timeout. */
  get proxyRejected(): number {
    return this.shared.listenerSum(this.slot, 'proxyRejected');
  }

  opened(flow: LiveFlow): void {
    this.shared.listenerOpened(this.slot, this.region);
    this.live.add(flow);
  }

  closed(flow: LiveFlow): void {
    if (this.live.delete(flow)) {
      this.shared.listenerClosed(this.slot, this.region, flow.sentBytes(), flow.rcvdBytes(), flow.pubSent, flow.pubRcvd);
    }
  }

  count(what: 'noBackend' | 'queueTimeouts' | 'queueAbandoned' | 'queueRejected' | 'proxyRejected'): void {
    const field =
      what === 'noBackend' ? WL_NO_BACKEND
      : what === 'queueTimeouts' ? WL_QUEUE_TIMEOUTS
      : what === 'queueAbandoned' ? WL_QUEUE_ABANDONED
      : what === 'queueRejected' ? WL_QUEUE_REJECTED
      : WL_PROXY_REJECTED;
    this.shared.addListener(this.region, this.slot, field);
  }

  /**
   * Publishes the bytes this thread's open connections moved since the last call, so that readers in
   * other threads see transfers while they run, not only when they end.
   */
  publishLive(): void {
    const s = this.shared;
    for (const f of this.live) {
      const sent = f.sentBytes();
      const rcvd = f.rcvdBytes();
      const ds = sent - f.pubSent;
      const dr = rcvd - f.pubRcvd;
      if ((ds === 0 && dr === 0) || f.backendSlot < 0) continue;
      f.pubSent = sent;
      f.pubRcvd = rcvd;
      s.listenerLive(this.region, this.slot, ds, dr);
      const b = f.backendSlot;
      if (b < 0) continue; // not connected yet: counted when it ends
      s.backendLive(this.region, b, ds, dr);
    }
  }
}
