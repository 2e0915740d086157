// The state every thread shares: shared memory (a few SharedArrayBuffers), and the only module that knows
// its layout.
//
// The main thread (supervisor) and every data-plane worker see the same memory. What must be global and
// exact is in shared fields changed with Atomics: a backend's open connections (so maxc holds across all
// workers, not even one over), the round-robin cursor of a group, a listener's queue length and ticket
// order, and a backend's health and operator flags (so a connect failure in one worker ejects the
// backend for all of them, and `disable` is seen by all before the command answers).
//
// Counters that only grow (connections, bytes, failures, queue figures) are not contended: each worker
// has a region of its own that only it writes, and readers add the regions up. A region outlives the
// worker that wrote it (the buffer belongs to the main thread), so a worker that dies loses no count; its
// replacement takes over the same region. Float64 counts stay exact up to 2^53.
//
// Slots are numbers the main thread gives to listeners, groups and backends (src/shared/slots.ts); a
// backend keeps its slot for as long as its identity survives reloads and edits. The memory is sized
// from the first table and grows in place as later tables (reloads, DNS discovery) need more slots, up
// to twice the table limits of src/config/limits.ts (SharedBuffers below).

import type { CheckResult, CheckStatus, HealthFields, Transition } from '../health/state.ts';
import { recordCheck } from '../health/state.ts';
import { TABLE_LIMITS, type TableCounts } from '../config/limits.ts';

// --- Layout ------------------------------------------------------------------------------------------

/** Backend fields changed with Atomics (Int32). */
const B_CUR = 0; // connections open (claimed slots), all workers
const B_MAX = 1; // highest B_CUR seen
const B_FLAGS = 2;
const B_LOCK = 3; // guards the health/ejection fields below while they change together
const B_STREAK = 4;
const B_STATUS = 5; // CheckStatus as an index into CHECK_STATUSES
const B_CHKFAIL = 6;
const B_CHKDOWN = 7;
const B_I32 = 8;

/** Backend fields read and written only under B_LOCK (Float64). */
const BF_EJECTED_UNTIL = 0;
const BF_BACKOFF = 1;
const BF_LAST_CHANGE = 2;
const BF_CHECK_MS = 3;
const BF_DOWN_SINCE = 4; // when it last went down (0 while up): `show stat` downtime
const BF_DOWNTIME = 5; // ms spent down before BF_DOWN_SINCE
const BF_BASE = 6; // 5 fields: what an operator's `reset` subtracts (attempts, failures, total, sent, rcvd)
const B_F64 = 11;

export const FLAG_CHECK_DOWN = 1; // active checks (or traffic, when checks are on) say down
export const FLAG_AUTODISABLED = 2; // balance -a: down until an operator enables it
export const FLAG_DRAINING = 4; // operator `drain`: no new connections
export const FLAG_PROBING = 8; // after a back-off, one connection is probing; others skip it

/** Per-worker backend counters (Float64, one region per worker). */
export const WB_ATTEMPTS = 0; // times chosen (balance's totalc, HAProxy's lbtot)
export const WB_FAILURES = 1; // connects that failed (HAProxy's econ)
export const WB_TOTAL = 2; // connections relayed (successful connects)
const WB_CLOSED_SENT = 3;
const WB_CLOSED_RCVD = 4;
const WB_LIVE_SENT = 5; // bytes of open connections, as last published by the worker
const WB_LIVE_RCVD = 6;
const WB_HELD = 7; // slots this worker holds now: released for it if it dies
const WB_F64 = 8;

/** Listener fields changed with Atomics (Int32). */
const L_CUR = 0;
const L_MAX = 1;
const L_QUEUED = 2; // clients waiting, all workers
const L_QUEUE_MAX = 3;
const L_TICKET = 4; // next queue ticket: the FIFO order across workers
const L_WAKE = 5; // bumped (and notified) whenever a queued client might now get a slot
const L_I32 = 8;

/** Per-worker listener counters (Float64). */
export const WL_TOTAL = 0;
export const WL_NO_BACKEND = 1;
const WL_CLOSED_SENT = 2;
const WL_CLOSED_RCVD = 3;
const WL_LIVE_SENT = 4;
const WL_LIVE_RCVD = 5;
export const WL_QUEUE_TIMEOUTS = 6;
export const WL_QUEUE_ABANDONED = 7;
export const WL_QUEUE_REJECTED = 8;
const WL_HELD = 9; // this worker's open clients
const WL_QUEUED = 10; // this worker's waiting clients
export const WL_PROXY_REJECTED = 11; // accept_proxy: closed without a valid PROXY header in time
const WL_F64 = 12;

/**
 * The connection limit (`[global] maxconn`), Int32, changed with Atomics by JS and by the addon's threads
 * (C11 atomics on the same memory: the addon maps it with napi_get_typedarray_info, see
 * native/lb_splice.c `attachLimit`). Keep in step with the C side's G_* constants.
 */
const G_CUR = 0; // connections lb holds now: accepted (natively or by Node) and not yet closed
const G_MAX = 1; // the limit; 0 = none
const G_REACHED = 2; // times it was reached: a worker's listeners paused at it, or a client closed at it
const G_REFUSED = 3; // clients Node accepted beyond it, closed at once (listeners that cannot pause)
const G_LIMITED = 4; // addon threads paused at the limit now (a release wakes them)
const G_HELD = 8; // then, per region: the connections that worker holds (given back if it dies)

/** Ticket value meaning "this worker has no waiter that any backend would do for". */
export const NO_TICKET = 0x7fffffff;

export const CHECK_STATUSES: readonly CheckStatus[] = ['INI', 'L4OK', 'L4TOUT', 'L4CON', 'L7OK', 'L7TOUT', 'L7RSP', 'SOCKERR'];

/** How many listener, group and backend slots there are (or may be). */
export type SlotCounts = TableCounts;

export interface Capacity extends SlotCounts {
  /** Counter regions: one per worker (a replacement reuses the region of the worker it replaces). */
  readonly regions: number;
}

/** The slots a SharedState has at first unless told (tests); the Runtime sizes its own from the table. */
export const DEFAULT_CAPACITY: Capacity = { listeners: 256, groups: 1024, backends: 4096, regions: 1 };

/**
 * The most slots the memory can grow to: twice the most a table may have, as a reload that replaces every
 * backend takes new slots while connections still hold the old ones (src/shared/slots.ts).
 */
export const SLOT_LIMITS: SlotCounts = { listeners: 2 * TABLE_LIMITS.listeners, groups: 2 * TABLE_LIMITS.groups, backends: 2 * TABLE_LIMITS.backends };

/**
 * The memory, one growable SharedArrayBuffer per array, each slot-major (a slot's fields, then each
 * region's counters for it), so growing appends slots and moves nothing: a counter stays where every
 * thread already reads it. Only the main thread grows them, before it hands out a table that uses the
 * new slots; each thread's views are fixed-length (V8 reads length-tracking views of a growable buffer
 * ~6x slower) and re-made by `remap()`, which a worker calls when it receives a table.
 */
export interface SharedBuffers {
  readonly bf: SharedArrayBuffer; // backend fields (Float64, B_F64 a slot)
  readonly wb: SharedArrayBuffer; // backend counters (Float64, WB_F64 a region, `regions` a slot)
  readonly bi: SharedArrayBuffer; // backend fields (Int32, B_I32 a slot)
  readonly wl: SharedArrayBuffer; // listener counters (Float64, WL_F64 a region, `regions` a slot)
  readonly li: SharedArrayBuffer; // listener fields (Int32, L_I32 a slot)
  readonly oldest: SharedArrayBuffer; // each region's oldest queue ticket (Int32, `regions` a listener slot)
  readonly gi: SharedArrayBuffer; // round-robin cursors (Int32, one a group slot)
  /** Not growable: connection-id sequences (Float64, one a region), then the limit (G_*, Int32), which the addon maps. */
  readonly fixed: SharedArrayBuffer;
}

/** What a worker needs to map the same memory: structured-clonable. */
export interface SharedInit {
  readonly buffers: SharedBuffers;
  readonly regions: number;
}

type Growable = Exclude<keyof SharedBuffers, 'fixed'>;

/** Bytes a slot takes in each growable buffer. */
function slotBytes(regions: number): Record<Growable, number> {
  return {
    bf: B_F64 * 8,
    wb: regions * WB_F64 * 8,
    bi: B_I32 * 4,
    wl: regions * WL_F64 * 8,
    li: L_I32 * 4,
    oldest: regions * 4,
    gi: 4,
  };
}

/** Which slot count each growable buffer follows. */
const KIND_OF: Readonly<Record<Growable, keyof SlotCounts>> = { bf: 'backends', wb: 'backends', bi: 'backends', wl: 'listeners', li: 'listeners', oldest: 'listeners', gi: 'groups' };
const GROWABLE = Object.keys(KIND_OF) as Growable[];

function allocate(c: Capacity, limits: SlotCounts): SharedBuffers {
  const per = slotBytes(c.regions);
  const growable = Object.fromEntries(
    GROWABLE.map((k) => [k, new SharedArrayBuffer(per[k] * c[KIND_OF[k]], { maxByteLength: per[k] * Math.max(limits[KIND_OF[k]], c[KIND_OF[k]]) })]),
  ) as Record<Growable, SharedArrayBuffer>;
  return { ...growable, fixed: new SharedArrayBuffer(c.regions * 8 + (G_HELD + c.regions) * 4) };
}

export class SharedState {
  readonly regions: number;
  readonly buffers: SharedBuffers;
  private bf!: Float64Array;
  private wb!: Float64Array;
  private wl!: Float64Array;
  private readonly idSeq: Float64Array;
  private bi!: Int32Array;
  private li!: Int32Array;
  private gi!: Int32Array;
  private oldestTicket!: Int32Array;
  /** The connection limit's fields (G_*), also the addon's view of them. */
  readonly conns: Int32Array;

  constructor(init?: SharedInit, capacity: Capacity = DEFAULT_CAPACITY, limits: SlotCounts = SLOT_LIMITS) {
    this.regions = init?.regions ?? capacity.regions;
    this.buffers = init?.buffers ?? allocate(capacity, limits);
    this.idSeq = new Float64Array(this.buffers.fixed, 0, this.regions);
    this.conns = new Int32Array(this.buffers.fixed, this.regions * 8, G_HELD + this.regions);
    this.remap();
    if (!init) this.oldestTicket.fill(NO_TICKET);
  }

  init(): SharedInit {
    return { buffers: this.buffers, regions: this.regions };
  }

  /** Slots there are now. */
  get capacity(): Capacity {
    return { listeners: this.li.length / L_I32, groups: this.gi.length, backends: this.bi.length / B_I32, regions: this.regions };
  }

  /** Most slots of each kind the memory can grow to. */
  get limits(): SlotCounts {
    const per = slotBytes(this.regions);
    return { listeners: this.buffers.li.maxByteLength / per.li, groups: this.buffers.gi.maxByteLength / per.gi, backends: this.buffers.bi.maxByteLength / per.bi };
  }

  /**
   * Views of what the buffers hold now (another thread may have grown them). Cheap when nothing grew;
   * slots of a table are only used after it arrived, and the main thread grows before it sends one.
   */
  remap(): void {
    const b = this.buffers;
    if (this.bi?.byteLength === b.bi.byteLength && this.li?.byteLength === b.li.byteLength && this.gi?.byteLength === b.gi.byteLength) return;
    this.bf = new Float64Array(b.bf, 0, b.bf.byteLength / 8);
    this.wb = new Float64Array(b.wb, 0, b.wb.byteLength / 8);
    this.bi = new Int32Array(b.bi, 0, b.bi.byteLength / 4);
    this.wl = new Float64Array(b.wl, 0, b.wl.byteLength / 8);
    this.li = new Int32Array(b.li, 0, b.li.byteLength / 4);
    this.oldestTicket = new Int32Array(b.oldest, 0, b.oldest.byteLength / 4);
    this.gi = new Int32Array(b.gi, 0, b.gi.byteLength / 4);
  }

  /**
   * Makes room for `n` slots of a kind (main thread): grows its buffers to twice what they hold, or to
   * `n`, within the limit; the new slots read as zero. False, changing nothing, when `n` is past the limit.
   */
  reserve(kind: keyof SlotCounts, n: number): boolean {
    if (n <= this.capacity[kind]) return true;
    if (n > this.limits[kind]) return false;
    const slots = Math.min(this.limits[kind], Math.max(n, 2 * this.capacity[kind]));
    const per = slotBytes(this.regions);
    const tickets = this.oldestTicket.length;
    for (const k of GROWABLE) if (KIND_OF[k] === kind) this.buffers[k].grow(per[k] * slots);
    this.remap();
    this.oldestTicket.fill(NO_TICKET, tickets); // a new listener slot has no waiter (as at start)
    return true;
  }

  // --- Backend slots: claimed before connecting, released when the connection ends ------------------

  /**
   * Takes one of a backend's connection slots, or returns false when it is at `maxc` (0 = unlimited).
   * A compare-and-swap, so however many workers race for the last slot, one gets it.
   */
  claim(b: number, maxc: number, region: number): boolean {
    const a = this.bi;
    const i = b * B_I32 + B_CUR;
    for (;;) {
      const cur = Atomics.load(a, i);
      if (maxc > 0 && cur >= maxc) return false;
      if (Atomics.compareExchange(a, i, cur, cur + 1) === cur) {
        atomicMax(a, b * B_I32 + B_MAX, cur + 1);
        if (region >= 0) this.wb[this.wbIndex(region, b) + WB_HELD]! += 1;
        return true;
      }
    }
  }

  release(b: number, region: number): void {
    Atomics.sub(this.bi, b * B_I32 + B_CUR, 1);
    if (region >= 0) this.wb[this.wbIndex(region, b) + WB_HELD]! -= 1;
  }

  cur(b: number): number {
    return Atomics.load(this.bi, b * B_I32 + B_CUR);
  }

  maxSeen(b: number): number {
    return Atomics.load(this.bi, b * B_I32 + B_MAX);
  }

  // --- Backend health and operator flags ------------------------------------------------------------

  flags(b: number): number {
    return Atomics.load(this.bi, b * B_I32 + B_FLAGS);
  }

  /** Down for a reason other than maxc or the operator's DIS: health, autodisable, drain, ejection, probe. */
  isDown(b: number, now: number): boolean {
    return Atomics.load(this.bi, b * B_I32 + B_FLAGS) !== 0 || this.bf[b * B_F64 + BF_EJECTED_UNTIL]! > now;
  }

  ejectedUntil(b: number): number {
    return this.bf[b * B_F64 + BF_EJECTED_UNTIL]!;
  }

  backoffMs(b: number): number {
    return this.bf[b * B_F64 + BF_BACKOFF]!;
  }

  lastChange(b: number): number {
    return this.bf[b * B_F64 + BF_LAST_CHANGE]!;
  }

  /** Milliseconds spent down (health, autodisable or ejection) over the slot's life, up to `now`. */
  downtimeMs(b: number, now: number): number {
    const since = this.bf[b * B_F64 + BF_DOWN_SINCE]!;
    return this.bf[b * B_F64 + BF_DOWNTIME]! + (since > 0 ? now - since : 0);
  }

  checkFields(b: number): { up: boolean; streak: number; failedChecks: number; downTransitions: number; lastStatus: CheckStatus; lastDurationMs: number } {
    const a = this.bi;
    const o = b * B_I32;
    return {
      up: (Atomics.load(a, o + B_FLAGS) & FLAG_CHECK_DOWN) === 0,
      streak: Atomics.load(a, o + B_STREAK),
      failedChecks: Atomics.load(a, o + B_CHKFAIL),
      downTransitions: Atomics.load(a, o + B_CHKDOWN),
      lastStatus: CHECK_STATUSES[Atomics.load(a, o + B_STATUS)] ?? 'INI',
      lastDurationMs: this.bf[b * B_F64 + BF_CHECK_MS]!,
    };
  }

  /**
   * Feeds one check result (from an active check, or a data-path connect when checks are on) to the
   * backend's rise/fall machine; returns the transition it caused. A passing result also ends a passive
   * ejection: the backend is reachable again.
   */
  recordCheck(b: number, result: CheckResult, rise: number, fall: number, now: number): Transition | null {
    return this.locked(b, () => {
      const fields = new SlotHealth(this, b);
      if (result.ok && this.bf[b * B_F64 + BF_EJECTED_UNTIL] !== 0) this.endEjection(b, now);
      const change = recordCheck(fields, result, rise, fall);
      if (change) {
        this.setLastChange(b, now);
        if (change.to === 'UP') this.endEjection(b, now);
        this.trackDown(b, now);
      }
      return change;
    });
  }

  /** Checks were removed from this backend: nothing can bring it back up any more, so it counts as up. */
  forgetChecks(b: number, now: number): void {
    this.locked(b, () => {
      Atomics.and(this.bi, b * B_I32 + B_FLAGS, ~FLAG_CHECK_DOWN);
      Atomics.store(this.bi, b * B_I32 + B_STREAK, 0);
      Atomics.store(this.bi, b * B_I32 + B_STATUS, 0);
      this.trackDown(b, now);
    });
  }

  /**
   * A connect to this backend failed: eject it for a doubling back-off (1 s to 30 s) so that later
   * clients, in every worker, skip it; with `autodisable`, keep it out until an operator enables it.
   * Returns the back-off now in force (0 when autodisabled).
   */
  connectFailed(b: number, now: number, autodisable: boolean, region: number): number {
    if (region >= 0) this.wb[this.wbIndex(region, b) + WB_FAILURES]! += 1;
    return this.locked(b, () => {
      const f = b * B_F64;
      Atomics.and(this.bi, b * B_I32 + B_FLAGS, ~FLAG_PROBING);
      if (autodisable) {
        const was = Atomics.or(this.bi, b * B_I32 + B_FLAGS, FLAG_AUTODISABLED);
        if ((was & FLAG_AUTODISABLED) === 0) this.setLastChange(b, now);
        this.trackDown(b, now);
        return 0;
      }
      const backoff = this.bf[f + BF_BACKOFF] === 0 ? BACKOFF_START_MS : Math.min(this.bf[f + BF_BACKOFF]! * 2, BACKOFF_MAX_MS);
      this.bf[f + BF_BACKOFF] = backoff;
      if (this.bf[f + BF_EJECTED_UNTIL] === 0) this.setLastChange(b, now);
      this.bf[f + BF_EJECTED_UNTIL] = now + backoff;
      this.trackDown(b, now);
      return backoff;
    });
  }

  connectSucceeded(b: number, now: number): void {
    if ((this.flags(b) & FLAG_PROBING) === 0 && this.bf[b * B_F64 + BF_EJECTED_UNTIL] === 0) return; // the common case: no lock
    this.locked(b, () => this.endEjection(b, now));
  }

  /** The backend was chosen: the first choice after a back-off becomes the one probe. */
  picked(b: number, region: number): void {
    if (region >= 0) this.wb[this.wbIndex(region, b) + WB_ATTEMPTS]! += 1;
    if (this.bf[b * B_F64 + BF_EJECTED_UNTIL] !== 0) Atomics.or(this.bi, b * B_I32 + B_FLAGS, FLAG_PROBING);
  }

  /** Operator `enable`: clears autodisable, drain and ejection so the backend is tried at once. */
  operatorEnabled(b: number, now: number): boolean {
    return this.locked(b, () => {
      const o = b * B_I32 + B_FLAGS;
      const was = Atomics.and(this.bi, o, ~(FLAG_AUTODISABLED | FLAG_DRAINING | FLAG_PROBING));
      const ejected = this.bf[b * B_F64 + BF_EJECTED_UNTIL] !== 0;
      this.bf[b * B_F64 + BF_EJECTED_UNTIL] = 0;
      this.bf[b * B_F64 + BF_BACKOFF] = 0;
      this.setLastChange(b, now);
      this.trackDown(b, now);
      return ejected || (was & (FLAG_AUTODISABLED | FLAG_DRAINING)) !== 0;
    });
  }

  setDraining(b: number, on: boolean, now: number): void {
    this.locked(b, () => {
      if (on) Atomics.or(this.bi, b * B_I32 + B_FLAGS, FLAG_DRAINING);
      else Atomics.and(this.bi, b * B_I32 + B_FLAGS, ~FLAG_DRAINING);
      this.setLastChange(b, now);
    });
  }

  /** `assign` re-points a backend: the new address has no health history (its counters stay). */
  resetHealth(b: number, now: number): void {
    this.locked(b, () => {
      Atomics.and(this.bi, b * B_I32 + B_FLAGS, ~(FLAG_CHECK_DOWN | FLAG_AUTODISABLED | FLAG_PROBING));
      Atomics.store(this.bi, b * B_I32 + B_STREAK, 0);
      Atomics.store(this.bi, b * B_I32 + B_STATUS, 0);
      this.bf[b * B_F64 + BF_EJECTED_UNTIL] = 0;
      this.bf[b * B_F64 + BF_BACKOFF] = 0;
      this.setLastChange(b, now);
      this.trackDown(b, now);
    });
  }

  /** A slot given to a new backend starts from nothing (only reused once no connection holds it). */
  clearBackend(b: number, now: number): void {
    this.bi.fill(0, b * B_I32, (b + 1) * B_I32);
    this.bf.fill(0, b * B_F64, (b + 1) * B_F64);
    this.bf[b * B_F64 + BF_LAST_CHANGE] = now;
    for (let r = 0; r < this.regions; r++) {
      const o = this.wbIndex(r, b);
      this.wb.fill(0, o, o + WB_F64);
    }
  }

  private setLastChange(b: number, now: number): void {
    this.bf[b * B_F64 + BF_LAST_CHANGE] = now;
  }

  private endEjection(b: number, now: number): void {
    const f = b * B_F64;
    Atomics.and(this.bi, b * B_I32 + B_FLAGS, ~FLAG_PROBING);
    if (this.bf[f + BF_EJECTED_UNTIL] !== 0) this.setLastChange(b, now);
    this.bf[f + BF_EJECTED_UNTIL] = 0;
    this.bf[f + BF_BACKOFF] = 0;
    this.trackDown(b, now);
  }

  /** Keeps the downtime clock in step with the flags (called under the lock after any change). */
  private trackDown(b: number, now: number): void {
    const f = b * B_F64;
    const down = (this.flags(b) & (FLAG_CHECK_DOWN | FLAG_AUTODISABLED)) !== 0 || this.bf[f + BF_EJECTED_UNTIL]! > now;
    const since = this.bf[f + BF_DOWN_SINCE]!;
    if (down && since === 0) this.bf[f + BF_DOWN_SINCE] = now;
    else if (!down && since > 0) {
      this.bf[f + BF_DOWNTIME]! += now - since;
      this.bf[f + BF_DOWN_SINCE] = 0;
    }
  }

  /**
   * Runs `fn` holding the backend's lock. Critical sections are a few field updates, so a spin is
   * cheaper than any wait (and the main thread may not block with Atomics.wait).
   */
  private locked<T>(b: number, fn: () => T): T {
    const i = b * B_I32 + B_LOCK;
    for (let spins = 0; Atomics.compareExchange(this.bi, i, 0, 1) !== 0; spins++) {
      if (spins > 1_000_000) throw new Error(`backend slot ${b}: lock held too long`);
    }
    try {
      return fn();
    } finally {
      Atomics.store(this.bi, i, 0);
    }
  }

  /** For SlotHealth: the fields the pure rise/fall machine reads and writes. */
  healthField(b: number, field: 'streak' | 'failed' | 'downs' | 'status', value?: number): number {
    const idx = b * B_I32 + (field === 'streak' ? B_STREAK : field === 'failed' ? B_CHKFAIL : field === 'downs' ? B_CHKDOWN : B_STATUS);
    if (value !== undefined) Atomics.store(this.bi, idx, value);
    return Atomics.load(this.bi, idx);
  }

  setCheckDown(b: number, down: boolean): void {
    if (down) Atomics.or(this.bi, b * B_I32 + B_FLAGS, FLAG_CHECK_DOWN);
    else Atomics.and(this.bi, b * B_I32 + B_FLAGS, ~FLAG_CHECK_DOWN);
  }

  setCheckMs(b: number, ms: number): void {
    this.bf[b * B_F64 + BF_CHECK_MS] = ms;
  }

  // --- Backend counters --------------------------------------------------------------------------------

  private wbIndex(region: number, b: number): number {
    return (b * this.regions + region) * WB_F64;
  }

  /** Adds to one of this worker's backend counters (WB_TOTAL, ...). */
  addBackend(region: number, b: number, field: number, n = 1): void {
    this.wb[this.wbIndex(region, b) + field]! += n;
  }

  /** A connection to this backend ended: its bytes move from live to closed, in this worker's region. */
  backendClosed(region: number, b: number, sent: number, rcvd: number, publishedSent: number, publishedRcvd: number): void {
    const o = this.wbIndex(region, b);
    this.wb[o + WB_CLOSED_SENT]! += sent;
    this.wb[o + WB_CLOSED_RCVD]! += rcvd;
    this.wb[o + WB_LIVE_SENT]! -= publishedSent;
    this.wb[o + WB_LIVE_RCVD]! -= publishedRcvd;
  }

  /** Adds the bytes open connections moved since they were last published. */
  backendLive(region: number, b: number, dSent: number, dRcvd: number): void {
    const o = this.wbIndex(region, b);
    this.wb[o + WB_LIVE_SENT]! += dSent;
    this.wb[o + WB_LIVE_RCVD]! += dRcvd;
  }

  /** A counter summed over every worker's region, less what an operator's `reset` took off. */
  backendSum(b: number, field: BackendCounter): number {
    return this.backendRaw(b, field) - this.bf[b * B_F64 + BF_BASE + BACKEND_COUNTERS.indexOf(field)]!;
  }

  /** Operator `reset`: the backend's counters restart from zero for every reader (never per worker). */
  resetBackendCounters(b: number): void {
    BACKEND_COUNTERS.forEach((field, k) => {
      this.bf[b * B_F64 + BF_BASE + k] = this.backendRaw(b, field);
    });
  }

  private backendRaw(b: number, field: BackendCounter): number {
    let n = 0;
    for (let r = 0; r < this.regions; r++) {
      const o = this.wbIndex(r, b);
      switch (field) {
        case 'attempts': n += this.wb[o + WB_ATTEMPTS]!; break;
        case 'failures': n += this.wb[o + WB_FAILURES]!; break;
        case 'total': n += this.wb[o + WB_TOTAL]!; break;
        case 'sent': n += this.wb[o + WB_CLOSED_SENT]! + this.wb[o + WB_LIVE_SENT]!; break;
        case 'rcvd': n += this.wb[o + WB_CLOSED_RCVD]! + this.wb[o + WB_LIVE_RCVD]!; break;
      }
    }
    return n;
  }

  // --- Listeners ----------------------------------------------------------------------------------------

  private wlIndex(region: number, l: number): number {
    return (l * this.regions + region) * WL_F64;
  }

  listenerOpened(l: number, region: number): void {
    const cur = Atomics.add(this.li, l * L_I32 + L_CUR, 1) + 1;
    atomicMax(this.li, l * L_I32 + L_MAX, cur);
    const o = this.wlIndex(region, l);
    this.wl[o + WL_TOTAL]! += 1;
    this.wl[o + WL_HELD]! += 1;
  }

  listenerClosed(l: number, region: number, sent: number, rcvd: number, publishedSent: number, publishedRcvd: number): void {
    Atomics.sub(this.li, l * L_I32 + L_CUR, 1);
    const o = this.wlIndex(region, l);
    this.wl[o + WL_HELD]! -= 1;
    this.wl[o + WL_CLOSED_SENT]! += sent;
    this.wl[o + WL_CLOSED_RCVD]! += rcvd;
    this.wl[o + WL_LIVE_SENT]! -= publishedSent;
    this.wl[o + WL_LIVE_RCVD]! -= publishedRcvd;
  }

  listenerLive(region: number, l: number, dSent: number, dRcvd: number): void {
    const o = this.wlIndex(region, l);
    this.wl[o + WL_LIVE_SENT]! += dSent;
    this.wl[o + WL_LIVE_RCVD]! += dRcvd;
  }

  addListener(region: number, l: number, field: number, n = 1): void {
    this.wl[this.wlIndex(region, l) + field]! += n;
  }

  listenerCur(l: number): number {
    return Atomics.load(this.li, l * L_I32 + L_CUR);
  }

  listenerMax(l: number): number {
    return Atomics.load(this.li, l * L_I32 + L_MAX);
  }

  listenerSum(l: number, field: 'total' | 'noBackend' | 'sent' | 'rcvd' | 'queueTimeouts' | 'queueAbandoned' | 'queueRejected' | 'proxyRejected'): number {
    let n = 0;
    for (let r = 0; r < this.regions; r++) {
      const o = this.wlIndex(r, l);
      switch (field) {
        case 'total': n += this.wl[o + WL_TOTAL]!; break;
        case 'noBackend': n += this.wl[o + WL_NO_BACKEND]!; break;
        case 'sent': n += this.wl[o + WL_CLOSED_SENT]! + this.wl[o + WL_LIVE_SENT]!; break;
        case 'rcvd': n += this.wl[o + WL_CLOSED_RCVD]! + this.wl[o + WL_LIVE_RCVD]!; break;
        case 'queueTimeouts': n += this.wl[o + WL_QUEUE_TIMEOUTS]!; break;
        case 'queueAbandoned': n += this.wl[o + WL_QUEUE_ABANDONED]!; break;
        case 'queueRejected': n += this.wl[o + WL_QUEUE_REJECTED]!; break;
        case 'proxyRejected': n += this.wl[o + WL_PROXY_REJECTED]!; break;
      }
    }
    return n;
  }

  // --- The queue: one FIFO across workers ----------------------------------------------------------------

  /** Takes a place in the listener's queue if it has fewer than `max` waiters; returns the ticket or -1. */
  enqueue(l: number, max: number, region: number): number {
    const i = l * L_I32 + L_QUEUED;
    for (;;) {
      const n = Atomics.load(this.li, i);
      if (n >= max) return -1;
      if (Atomics.compareExchange(this.li, i, n, n + 1) === n) {
        atomicMax(this.li, l * L_I32 + L_QUEUE_MAX, n + 1);
        this.wl[this.wlIndex(region, l) + WL_QUEUED]! += 1;
        return Atomics.add(this.li, l * L_I32 + L_TICKET, 1);
      }
    }
  }

  /** A waiter served back to the queue after a failed connect: it keeps its place (max not checked). */
  requeue(l: number, region: number): void {
    atomicMax(this.li, l * L_I32 + L_QUEUE_MAX, Atomics.add(this.li, l * L_I32 + L_QUEUED, 1) + 1);
    this.wl[this.wlIndex(region, l) + WL_QUEUED]! += 1;
  }

  dequeue(l: number, region: number): void {
    Atomics.sub(this.li, l * L_I32 + L_QUEUED, 1);
    this.wl[this.wlIndex(region, l) + WL_QUEUED]! -= 1;
  }

  queued(l: number): number {
    return Atomics.load(this.li, l * L_I32 + L_QUEUED);
  }

  queueMax(l: number): number {
    return Atomics.load(this.li, l * L_I32 + L_QUEUE_MAX);
  }

  /** Publishes the ticket of this worker's oldest waiter that any backend would do for (or NO_TICKET). */
  publishOldest(l: number, region: number, ticket: number): void {
    Atomics.store(this.oldestTicket, l * this.regions + region, ticket);
  }

  /** The oldest such ticket over every worker: only its holder may take a slot for such a waiter. */
  oldestTicketOf(l: number): number {
    let min = NO_TICKET;
    for (let r = 0; r < this.regions; r++) {
      const t = Atomics.load(this.oldestTicket, l * this.regions + r);
      if (t < min) min = t;
    }
    return min;
  }

  wakeValue(l: number): number {
    return Atomics.load(this.li, l * L_I32 + L_WAKE);
  }

  /** Something that might let a queued client in happened (a slot freed, a backend came up): wake the workers. */
  wake(l: number): void {
    Atomics.add(this.li, l * L_I32 + L_WAKE, 1);
    Atomics.notify(this.li, l * L_I32 + L_WAKE);
  }

  /** Resolves when `wake(l)` is called after `seen` was read (or at once if it already was). */
  waitWake(l: number, seen: number, timeoutMs: number): Promise<unknown> | null {
    const r = Atomics.waitAsync(this.li, l * L_I32 + L_WAKE, seen, timeoutMs);
    return r.async ? r.value : null;
  }

  /** The next connection number of a worker's region: a replacement worker goes on where the dead one stopped. */
  nextConnSeq(region: number): number {
    return ++this.idSeq[region]!;
  }

  // --- Groups ---------------------------------------------------------------------------------------------

  cursor(g: number): number {
    return Atomics.load(this.gi, g);
  }

  /** Takes the next round-robin turn of a group (fetch-and-add): concurrent workers never take the same one. */
  takeTurn(g: number): number {
    return Atomics.add(this.gi, g, 1);
  }

  /** Moves the round-robin cursor from `from` to `to` unless another worker moved it meanwhile. */
  advanceCursor(g: number, from: number, to: number): void {
    Atomics.compareExchange(this.gi, g, from, to);
  }

  setCursor(g: number, to: number): void {
    Atomics.store(this.gi, g, to);
  }

  // --- Workers ----------------------------------------------------------------------------------------------

  /**
   * A worker died: its connections are gone, so the slots it held are released for it, its published
   * live bytes become closed bytes (counts never go backwards), and its queue places are given up.
   * Its region then belongs to its replacement.
   */
  workerGone(region: number, listeners: readonly number[], backends: readonly number[]): void {
    for (const b of backends) {
      const o = this.wbIndex(region, b);
      const held = this.wb[o + WB_HELD]!;
      if (held !== 0) Atomics.sub(this.bi, b * B_I32 + B_CUR, held);
      this.wb[o + WB_HELD] = 0;
      this.wb[o + WB_CLOSED_SENT]! += this.wb[o + WB_LIVE_SENT]!;
      this.wb[o + WB_CLOSED_RCVD]! += this.wb[o + WB_LIVE_RCVD]!;
      this.wb[o + WB_LIVE_SENT] = 0;
      this.wb[o + WB_LIVE_RCVD] = 0;
    }
    for (const l of listeners) {
      const o = this.wlIndex(region, l);
      const held = this.wl[o + WL_HELD]!;
      if (held !== 0) Atomics.sub(this.li, l * L_I32 + L_CUR, held);
      this.wl[o + WL_HELD] = 0;
      const queued = this.wl[o + WL_QUEUED]!;
      if (queued !== 0) Atomics.sub(this.li, l * L_I32 + L_QUEUED, queued);
      this.wl[o + WL_QUEUED] = 0;
      this.wl[o + WL_CLOSED_SENT]! += this.wl[o + WL_LIVE_SENT]!;
      this.wl[o + WL_CLOSED_RCVD]! += this.wl[o + WL_LIVE_RCVD]!;
      this.wl[o + WL_LIVE_SENT] = 0;
      this.wl[o + WL_LIVE_RCVD] = 0;
      Atomics.store(this.oldestTicket, l * this.regions + region, NO_TICKET);
      this.wake(l);
    }
    // Its connections (those the addon accepted too) closed with it.
    const held = Atomics.exchange(this.conns, G_HELD + region, 0);
    if (held !== 0) Atomics.sub(this.conns, G_CUR, held);
  }

  // --- The connection limit ----------------------------------------------------------------------------

  /**
   * Takes a place for a connection Node accepted (the addon takes its own the same way, in C): false
   * when lb holds `maxconn` already. A compare-and-swap, so the limit holds exactly across workers.
   */
  admitConn(region: number): boolean {
    const g = this.conns;
    for (;;) {
      const cur = Atomics.load(g, G_CUR);
      const max = Atomics.load(g, G_MAX);
      if (max > 0 && cur >= max) {
        Atomics.add(g, G_REACHED, 1);
        Atomics.add(g, G_REFUSED, 1);
        return false;
      }
      if (Atomics.compareExchange(g, G_CUR, cur, cur + 1) === cur) break;
    }
    Atomics.add(g, G_HELD + region, 1);
    return true;
  }

  /** Gives back a place admitConn() took. True when addon threads wait for one (wake them: limitWake). */
  releaseConn(region: number): boolean {
    Atomics.sub(this.conns, G_HELD + region, 1);
    Atomics.sub(this.conns, G_CUR, 1);
    return Atomics.load(this.conns, G_LIMITED) > 0;
  }

  /** Sets the limit (0 = none). True when addon threads wait at the old one (wake them: limitWake). */
  setMaxconn(max: number): boolean {
    Atomics.store(this.conns, G_MAX, max);
    return Atomics.load(this.conns, G_LIMITED) > 0;
  }

  connFigures(): { max: number; cur: number; reached: number; refused: number } {
    const g = this.conns;
    return { max: Atomics.load(g, G_MAX), cur: Atomics.load(g, G_CUR), reached: Atomics.load(g, G_REACHED), refused: Atomics.load(g, G_REFUSED) };
  }

  /** A listener slot given to a new listener starts from nothing. */
  clearListener(l: number): void {
    this.li.fill(0, l * L_I32, (l + 1) * L_I32);
    for (let r = 0; r < this.regions; r++) {
      const o = this.wlIndex(r, l);
      this.wl.fill(0, o, o + WL_F64);
      Atomics.store(this.oldestTicket, l * this.regions + r, NO_TICKET);
    }
  }

  clearGroup(g: number): void {
    Atomics.store(this.gi, g, 0);
  }
}

const BACKEND_COUNTERS = ['attempts', 'failures', 'total', 'sent', 'rcvd'] as const;
export type BackendCounter = (typeof BACKEND_COUNTERS)[number];

export const BACKOFF_START_MS = 1000;
export const BACKOFF_MAX_MS = 30_000;

function atomicMax(a: Int32Array, i: number, v: number): void {
  for (let cur = Atomics.load(a, i); v > cur; cur = Atomics.load(a, i)) {
    if (Atomics.compareExchange(a, i, cur, v) === cur) return;
  }
}

/** The rise/fall fields of one backend slot, for the pure state machine in health/state.ts. */
class SlotHealth implements HealthFields {
  private readonly s: SharedState;
  private readonly b: number;
  constructor(s: SharedState, b: number) {
    this.s = s;
    this.b = b;
  }
  get up(): boolean {
    return (this.s.flags(this.b) & FLAG_CHECK_DOWN) === 0;
  }
  set up(v: boolean) {
    this.s.setCheckDown(this.b, !v);
  }
  get streak(): number {
    return this.s.healthField(this.b, 'streak');
  }
  set streak(v: number) {
    this.s.healthField(this.b, 'streak', v);
  }
  get failedChecks(): number {
    return this.s.healthField(this.b, 'failed');
  }
  set failedChecks(v: number) {
    this.s.healthField(this.b, 'failed', v);
  }
  get downTransitions(): number {
    return this.s.healthField(this.b, 'downs');
  }
  set downTransitions(v: number) {
    this.s.healthField(this.b, 'downs', v);
  }
  get lastStatus(): CheckStatus {
    return CHECK_STATUSES[this.s.healthField(this.b, 'status')] ?? 'INI';
  }
  set lastStatus(v: CheckStatus) {
    this.s.healthField(this.b, 'status', Math.max(0, CHECK_STATUSES.indexOf(v)));
  }
  set lastDurationMs(v: number) {
    this.s.setCheckMs(this.b, v);
  }
  get lastDurationMs(): number {
    return this.s.checkFields(this.b).lastDurationMs;
  }
}
