// The splice(2) relay: hands a connected client/backend socket pair to the native addon
// (native/lb_splice.c), which moves the bytes kernel to kernel through a pipe on a thread of its own.
//
// JS keeps everything up to the connect. Then the two sockets' descriptors are duplicated by the addon
// and the JS sockets are destroyed: libuv stops watching its descriptor (EPOLL_CTL_DEL) and closes it,
// and the TCP connection lives on through the duplicate. That is only sound for a socket with nothing
// buffered in JS (nothing read, nothing waiting to be written): the listener accepts with
// `pauseOnConnect`, and the backend is handed over from its 'connect' event (or after `pause()`), so
// neither has been read from.
//
// The addon is loaded once per thread (src/addon.ts; it keeps per-environment state, so each worker
// thread gets its own relay thread and pipe pool). Its absence is normal: `spliceAvailable()` says why,
// and the caller runs the JS relay instead.

import { isIP, type Socket } from 'node:net';
import { errnoName, loadAddon } from '../addon.ts';
import { Code, LbError } from '../errors.ts';

/** How a spliced connection ended; the first cause wins, as in the JS relay. */
export type SpliceEnd = 'client-close' | 'backend-close' | 'reset' | 'idle-timeout' | 'aborted' | 'error' | 'connect-failed';

/** Indexed by the addon's end codes (native/lb_splice.c, `END_*`). Code 0 is never reported. */
const END_NAMES: readonly SpliceEnd[] = ['error', 'client-close', 'backend-close', 'reset', 'idle-timeout', 'aborted', 'error', 'connect-failed'];
/** The addon's event for a connection made by `connect()` that reached its backend (`EV_CONNECTED`). */
const EV_CONNECTED = 100;
/** An accepted connection's connect failed; it waits for the next backend (`EV_CONNECT_FAILED`). */
const EV_CONNECT_FAILED = 101;
/** accept_proxy: the bytes a pending client sent so far, peeked (`EV_PEEKED`; errno 1: it half-closed). */
const EV_PEEKED = 104;

export interface SpliceResult {
  /** Bytes read from the client (and passed to the backend). */
  readonly sent: number;
  /** Bytes read from the backend (and passed to the client). */
  readonly rcvd: number;
  readonly end: SpliceEnd;
  /** The socket error behind 'reset' or 'error' (`ECONNRESET`, ...), else null. */
  readonly errno: string | null;
}

export interface SpliceOptions {
  /** Both sides closed after this long without a byte moving either way; 0 = never. */
  readonly idleTimeoutMs: number;
}

export interface SpliceHandle {
  /** Bytes from the client so far: live while the relay runs, final after it ended. */
  sent(): number;
  /** Bytes from the backend so far. */
  rcvd(): number;
  /** Closes both sides now (drain timeout, shutdown); the end is reported as 'aborted'. No-op once ended. */
  abort(): void;
  readonly ended: boolean;
}

export type SpliceAvailability = { ok: true } | { ok: false; reason: string };

export interface SpliceStats {
  /** Pipes created since the addon was loaded in this thread. */
  pipesCreated: number;
  /** Pipes held by connections now (only while bytes sit in them). */
  pipesInUse: number;
  /** Empty pipes kept for reuse. */
  pipesPooled: number;
  /** Capacity of the last pipe created (F_SETPIPE_SZ may be refused). */
  pipeBytes: number;
  /** Connections the relay thread is running. */
  connections: number;
  /** splice(2) calls made so far (bytes per call shows what the pipe size buys). */
  spliceCalls: number;
  /** Backend connects made by the addon (the native connect path). */
  connects: number;
  /** Connections whose end JS has not heard of yet. */
  pending: number;
}

type OnAccept = (listener: number, slot: number, address: string | null, port: number, errno: number, peeking: boolean) => void;

interface Addon {
  init(onEnd: (slot: number, sent: number, rcvd: number, end: number, errno: number, data?: Buffer) => void, pipeBytes: number, poolMax: number, onAccept?: OnAccept): void;
  listen?(id: number, address: string, port: number, backlog: number, v6only: boolean, reusePort: boolean, peekMax: number): number;
  unlisten?(id: number): void;
  listenPeek?(id: number, peekMax: number): void;
  connectAccepted?(slot: number, address: string, port: number, source: string, connectMs: number, idleMs: number, preface?: Buffer): number;
  wait?(slot: number): void;
  peek?(slot: number, max: number): void;
  skip?(slot: number, n: number): void;
  localAddress?(slot: number): [string, number] | null;
  attachLimit?(limit: Int32Array, region: number): void;
  relay(clientFd: number, backendFd: number, idleMs: number): number;
  connect?(clientFd: number, address: string, port: number, source: string, connectMs: number, idleMs: number): number;
  flush?(): void;
  abort(slot: number): void;
  counters(slab: number): Float64Array;
  stats(): SpliceStats;
  probe(): string | null;
  readonly slabSlots: number;
}

/**
 * Pipe size asked of the kernel (F_SETPIPE_SZ). Measured on loopback (see native/README.md): the
 * default 64 KiB pipe already gets most of the gain, 256 KiB a little more, and larger pipes count
 * against the user's pipe-page budget (fs.pipe-user-pages-soft) for nothing. `LB_SPLICE_PIPE_BYTES`
 * overrides it for measurements; 0 keeps the kernel's default.
 */
const PIPE_BYTES = 256 * 1024;
/** Empty pipes kept per thread for reuse; more are closed when they empty. */
const POOL_MAX = 64;

/** The addon of this thread, once initialised. */
interface Loaded {
  readonly addon: Addon;
  /** Live handles by the addon's slot (slots are reused once an end has been delivered). */
  readonly bySlot: (Ending | undefined)[];
  /** Counter slabs, fetched from the addon once each. */
  readonly slabs: Float64Array[];
  /** The addon's listening sockets in this thread, by the id given to listen(). */
  readonly listeners: Map<number, AcceptSink>;
}

/** What the end dispatcher needs of a handle (possibly made by another copy of this module). */
interface Ending {
  finish(result: SpliceResult): void;
  readonly onEnd: (result: SpliceResult) => void;
  /** A native connect reached its backend (handles made by spliceConnect or accepted). */
  connected?(): void;
  /** An accepted connection's connect failed (it waits for the next one). */
  connectFailed?(errno: string): void;
  /** An accepted connection's first bytes, peeked (peek()); `fin`: the client half-closed after them. */
  peeked?(bytes: Buffer, fin: boolean): void;
}

// The addon keeps one instance per thread and is initialised once: should this module be evaluated
// twice in one thread (a test runner's module isolation, a second bundle), both copies share it.
const SHARED = Symbol.for('lb.splice');
type WithShared = typeof globalThis & { [SHARED]?: Loaded };

let loaded: Loaded | { reason: string } | null = null;

function envInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  return Number.isInteger(n) && n >= 0 ? n : fallback;
}

function load(): Loaded | { reason: string } {
  if (process.env['LB_SPLICE'] === 'off') return { reason: 'turned off (LB_SPLICE=off)' };
  const g = globalThis as WithShared;
  if (g[SHARED]) return g[SHARED];
  const mod = loadAddon();
  if (!mod.ok) return { reason: mod.reason };
  const addon = mod.exports as unknown as Addon;
  const refused = addon.probe();
  if (refused !== null) return { reason: `the kernel refuses splice: ${refused}` };
  const shared: Loaded = { addon, bySlot: [], slabs: [], listeners: new Map() };
  addon.init(
    (slot, sent, rcvd, end, errno, data) => onEnd(shared, slot, sent, rcvd, end, errno, data),
    envInt('LB_SPLICE_PIPE_BYTES', PIPE_BYTES),
    envInt('LB_SPLICE_POOL_MAX', POOL_MAX),
    (listener, slot, address, port, errno, peeking) => onAccept(shared, listener, slot, address, port, errno, peeking),
  );
  g[SHARED] = shared;
  return shared;
}

function loadedOrNull(): Loaded | null {
  loaded ??= load();
  return 'addon' in loaded ? loaded : null;
}

/** Whether this thread can splice, and if not why (said once at start by the caller). */
export function spliceAvailable(): SpliceAvailability {
  loaded ??= load();
  return 'addon' in loaded ? { ok: true } : { ok: false, reason: loaded.reason };
}

/** Pipe pool and connection figures of this thread's relay, or null without the addon. */
export function spliceStats(): SpliceStats | null {
  return loadedOrNull()?.addon.stats() ?? null;
}

class Handle implements SpliceHandle, Ending {
  readonly slot: number;
  protected readonly addon: Addon;
  private readonly counts: Float64Array;
  private readonly at: number;
  private final: SpliceResult | null = null;
  readonly onEnd: (result: SpliceResult) => void;

  constructor(addon: Addon, slot: number, counts: Float64Array, at: number, onEnd: (result: SpliceResult) => void) {
    this.addon = addon;
    this.slot = slot;
    this.counts = counts;
    this.at = at;
    this.onEnd = onEnd;
  }

  get ended(): boolean {
    return this.final !== null;
  }

  sent(): number {
    return this.final !== null ? this.final.sent : this.counts[this.at]!;
  }

  rcvd(): number {
    return this.final !== null ? this.final.rcvd : this.counts[this.at + 1]!;
  }

  abort(): void {
    if (this.final === null) this.addon.abort(this.slot);
  }

  finish(result: SpliceResult): void {
    this.final = result;
  }
}

function onEnd(shared: Loaded, slot: number, sent: number, rcvd: number, end: number, errno: number, data?: Buffer): void {
  const h = shared.bySlot[slot];
  if (h === undefined) return;
  try {
    if (end === EV_CONNECTED) {
      h.connected?.();
      return;
    }
    if (end === EV_PEEKED) {
      h.peeked?.(data ?? Buffer.alloc(0), errno === 1);
      return;
    }
    if (end === EV_CONNECT_FAILED) {
      h.connectFailed?.(errnoName(errno) ?? 'ECONNREFUSED');
      return;
    }
    shared.bySlot[slot] = undefined;
    const result: SpliceResult = { sent, rcvd, end: END_NAMES[end] ?? 'error', errno: errnoName(errno) };
    h.finish(result);
    h.onEnd(result);
  } catch (err) {
    // Thrown from a callback the addon called: rethrown outside it, as an ordinary uncaught exception.
    process.nextTick(() => {
      throw err;
    });
  }
}

interface HandleFd {
  fd?: number;
}

/** Why this socket cannot be handed over, or null if it can. */
export function handOverRefusal(socket: Socket): string | null {
  const handle = (socket as unknown as { _handle?: HandleFd | null })._handle;
  if (socket.destroyed || socket.connecting || !handle || typeof handle.fd !== 'number' || handle.fd < 0) return 'not connected';
  if (socket.readableLength > 0) return `${socket.readableLength} bytes already read into JS`;
  if (socket.writableLength > 0) return `${socket.writableLength} bytes waiting to be written from JS`;
  if (socket.readableEnded || socket.writableEnded) return 'already half-closed in JS';
  return null;
}

/**
 * Relays `client` <-> `backend` with splice until both directions have ended. On return the two JS
 * sockets are destroyed (their 'close' events follow; the TCP connections stay open) and `onEnd` is
 * called once, later, with the byte counts and how it ended. Throws LB_SPLICE_UNAVAILABLE or
 * LB_SPLICE_HANDOVER with the sockets untouched, so that the caller can run the JS relay instead.
 */
export function spliceRelay(client: Socket, backend: Socket, opts: SpliceOptions, onEnd: (result: SpliceResult) => void): SpliceHandle {
  const shared = loadedOrNull();
  if (shared === null) throw new LbError(Code.SPLICE_UNAVAILABLE, `splice relay unavailable: ${(loaded as { reason: string }).reason}`);
  for (const [name, socket] of [['client', client], ['backend', backend]] as const) {
    const why = handOverRefusal(socket);
    if (why !== null) throw new LbError(Code.SPLICE_HANDOVER, `cannot splice the ${name} socket: ${why}`);
  }
  const addon = shared.addon;
  const fd = (s: Socket): number => (s as unknown as { _handle: Required<HandleFd> })._handle.fd;
  let slot: number;
  try {
    slot = addon.relay(fd(client), fd(backend), opts.idleTimeoutMs);
  } catch (err) {
    throw new LbError(Code.SPLICE_HANDOVER, `cannot splice: ${(err as Error).message}`);
  }
  const slab = Math.floor(slot / addon.slabSlots);
  const counts = (shared.slabs[slab] ??= addon.counters(slab));
  const h = new Handle(addon, slot, counts, (slot % addon.slabSlots) * 2, onEnd);
  shared.bySlot[slot] = h;
  // The addon holds duplicates now: closing the JS side's descriptors leaves the connections open.
  client.destroy();
  backend.destroy();
  return h;
}

/** What a native connect tells its owner; `handle` is the one spliceConnect returned. */
export interface NativeConnectOwner {
  /** The backend accepted: the addon relays from now on, and the caller lets its client socket go. */
  nativeConnected(handle: SpliceHandle): void;
  /**
   * The connection ended: before connecting (`connect-failed` with its errno, `reset` when the client
   * went first, `aborted`) or after it, as spliceRelay's onEnd.
   */
  nativeEnded(handle: SpliceHandle, result: SpliceResult): void;
}

export interface NativeTarget {
  /** An IP literal (the table's resolved address). */
  readonly address: string;
  readonly port: number;
  /** The local address to bind, an IP literal, or null. */
  readonly source: string | null;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
}

class ConnectHandle extends Handle {
  private readonly owner: NativeConnectOwner;

  constructor(addon: Addon, slot: number, counts: Float64Array, at: number, owner: NativeConnectOwner) {
    super(addon, slot, counts, at, (r) => owner.nativeEnded(this, r));
    this.owner = owner;
  }

  connected(): void {
    this.owner.nativeConnected(this);
  }
}

/** Native connects can be turned off alone (`LB_NATIVE_CONNECT=off`), to compare the two paths. */
const nativeConnectOff = process.env['LB_NATIVE_CONNECT'] === 'off';

/**
 * Delivers the addon's pending events now (connects and ends), before counters are read: a native
 * connect relays at once, so a client may have its reply before JS heard of the connect.
 */
export function spliceFlush(): void {
  const shared = globalThis as WithShared;
  shared[SHARED]?.addon.flush?.();
}

/** Whether this thread connects to backends natively on the splice path, and if not why. */
export function nativeConnectAvailable(): SpliceAvailability {
  const shared = loadedOrNull();
  if (shared === null) return { ok: false, reason: `no splice: ${(loaded as { reason: string }).reason}` };
  if (nativeConnectOff) return { ok: false, reason: 'turned off (LB_NATIVE_CONNECT=off)' };
  if (typeof shared.addon.connect !== 'function') return { ok: false, reason: 'the addon is older than this lb: rebuild it with npm run build:native' };
  return { ok: true };
}

/**
 * Connects to `target` in the addon for `client` (a socket nothing was read from), and relays the pair
 * there once connected: no net.Socket exists for the backend. Returns the handle; an errno name when the
 * connect failed at once (nothing is kept: the caller fails over as for any failed connect); or null
 * when this cannot be done natively (no addon, an address that is not an IP literal, a client socket
 * that cannot be handed over): the caller connects in JS. The client socket stays the caller's until
 * `nativeConnected`: a failed connect leaves it to try the next backend with.
 */
export function spliceConnect(client: Socket, target: NativeTarget, owner: NativeConnectOwner): SpliceHandle | string | null {
  const shared = loadedOrNull();
  if (shared === null || nativeConnectOff) return null;
  const addon = shared.addon;
  if (addon.connect === undefined || handOverRefusal(client) !== null || isIP(target.address) === 0) return null;
  const fd = (client as unknown as { _handle: Required<HandleFd> })._handle.fd;
  let slot: number;
  try {
    slot = addon.connect(fd, target.address, target.port, target.source ?? '', target.connectTimeoutMs, target.idleTimeoutMs);
  } catch {
    return null; // out of memory for counters, no thread: the JS path may still work
  }
  if (slot < 0) return errnoName(-slot) ?? 'EINVAL';
  const slab = Math.floor(slot / addon.slabSlots);
  const counts = (shared.slabs[slab] ??= addon.counters(slab));
  const h = new ConnectHandle(addon, slot, counts, (slot % addon.slabSlots) * 2, owner);
  shared.bySlot[slot] = h;
  return h;
}

// --- Native accept: the addon's listening sockets -------------------------------------------------------

/** Where a listener's accepted clients go. */
export interface AcceptSink {
  /** A client the addon accepted and holds (pending): the sink decides for it through `conn`. */
  accepted(conn: AcceptedConn, address: string, port: number): void;
  /** The listener stopped accepting for a moment (EMFILE, ENFILE, ENOBUFS, ENOMEM); it resumes by itself. */
  paused(errno: string): void;
}

/** What an accepted connection tells its owner (the JS side that decides for it). */
export interface AcceptedOwner extends NativeConnectOwner {
  /** The connect failed (refused, timed out, unreachable): the client waits for the next backend. */
  nativeConnectFailed(handle: SpliceHandle, errno: string): void;
  /** After peek(): every byte the client sent so far (more than last time), `fin` once it half-closed. */
  nativePeeked?(handle: SpliceHandle, bytes: Buffer, fin: boolean): void;
}

/** A client accepted by the addon: connected to a backend with connect(), or closed with abort(). */
export class AcceptedConn extends Handle {
  owner: AcceptedOwner | null = null;
  /** Its first bytes are peeked at since its accept (its listener's peekMax): peek() is not needed. */
  readonly peeking: boolean;
  private readonly connectFn: NonNullable<Addon['connectAccepted']>;

  constructor(addon: Addon, slot: number, counts: Float64Array, at: number, peeking: boolean) {
    super(addon, slot, counts, at, (r) => this.owner?.nativeEnded(this, r));
    this.peeking = peeking;
    this.connectFn = addon.connectAccepted!.bind(addon);
  }

  /**
   * Connects it to `target` on the addon's thread, writing `preface` (a PROXY header) to the backend before
   * any byte of the client's; an errno name when that cannot start (EINVAL), else null.
   */
  connect(target: NativeTarget, preface: Buffer | null = null): string | null {
    const r = this.connectFn(this.slot, target.address, target.port, target.source ?? '', target.connectTimeoutMs, target.idleTimeoutMs, preface ?? undefined);
    return r < 0 ? (errnoName(-r) ?? 'EINVAL') : null;
  }

  /**
   * accept_proxy: the client's first bytes (at most `max`) are reported to the owner as they come
   * (nativePeeked, all of them each time), left in the socket, until skip().
   */
  peek(max: number): void {
    if (!this.ended) this.addon.peek!(this.slot, max);
  }

  /** Drops the first `n` bytes peeked (the PROXY header) and ends the peeking; the rest goes to the backend. */
  skip(n: number): void {
    if (!this.ended) this.addon.skip!(this.slot, n);
  }

  /** The address the client connected to (send_proxy's destination), or null once the connection ended. */
  localAddress(): { addr: string; port: number } | null {
    if (this.ended) return null;
    const a = this.addon.localAddress!(this.slot);
    return a === null ? null : { addr: a[0], port: a[1] };
  }

  peeked(bytes: Buffer, fin: boolean): void {
    this.owner?.nativePeeked?.(this, bytes, fin);
  }

  /**
   * It waits in the listener's queue: the addon keeps it unread and ends it ('client-close') if the
   * client closes having sent nothing, or ('reset') if it resets. A request sent then half-closed stays.
   */
  wait(): void {
    if (!this.ended) this.addon.wait!(this.slot);
  }

  connected(): void {
    this.owner?.nativeConnected(this);
  }

  connectFailed(errno: string): void {
    this.owner?.nativeConnectFailed(this, errno);
  }
}

function onAccept(shared: Loaded, listener: number, slot: number, address: string | null, port: number, errno: number, peeking: boolean): void {
  const sink = shared.listeners.get(listener);
  try {
    if (slot < 0) {
      sink?.paused(errnoName(errno) ?? `errno ${errno}`);
      return;
    }
    const addon = shared.addon;
    const slab = Math.floor(slot / addon.slabSlots);
    const counts = (shared.slabs[slab] ??= addon.counters(slab));
    const conn = new AcceptedConn(addon, slot, counts, (slot % addon.slabSlots) * 2, peeking);
    shared.bySlot[slot] = conn;
    if (sink === undefined) conn.abort(); // its listener closed meanwhile: accepted just before the close
    else sink.accepted(conn, address ?? '', port);
  } catch (err) {
    process.nextTick(() => {
      throw err;
    });
  }
}

/** Native accepts can be turned off alone (`LB_NATIVE_ACCEPT=off`), to compare the two paths. */
const nativeAcceptOff = process.env['LB_NATIVE_ACCEPT'] === 'off';

/** Whether this thread's addon accepts clients itself (listening sockets in the addon), and if not why. */
export function nativeAcceptAvailable(): SpliceAvailability {
  const connect = nativeConnectAvailable();
  if (!connect.ok) return connect;
  if (nativeAcceptOff) return { ok: false, reason: 'turned off (LB_NATIVE_ACCEPT=off)' };
  const addon = loadedOrNull()!.addon;
  const needed = [addon.listen, addon.listenPeek, addon.connectAccepted, addon.wait, addon.attachLimit, addon.peek, addon.skip, addon.localAddress];
  if (needed.some((f) => typeof f !== 'function')) {
    return { ok: false, reason: 'the addon is older than this lb: rebuild it with npm run build:native' };
  }
  return { ok: true };
}

/**
 * This worker's native accepts count against lb's connection limit (`[global] maxconn`): `limit` is
 * the shared state's view of it (SharedState.conns), `region` this worker's. Before the first listen.
 */
export function spliceAttachLimit(limit: Int32Array, region: number): void {
  loadedOrNull()?.addon.attachLimit?.(limit, region);
}

let nextListenerId = 1;

/** A listening socket of the addon's, accepting on its thread. */
export interface NativeListening {
  readonly port: number;
  /** accept_proxy: the clients accepted from now on are peeked at (up to `max` bytes), or not (0). */
  peek(max: number): void;
  close(): void;
}

/**
 * Binds and listens on `address:port` (numeric) in the addon, SO_REUSEPORT when `reusePort`; each
 * client goes to `sink`, peeked at from its accept when `peekMax` > 0 (accept_proxy). Returns the
 * listening socket, or the errno name when it cannot be had.
 */
export function spliceListen(address: string, port: number, backlog: number, reusePort: boolean, peekMax: number, sink: AcceptSink): NativeListening | string {
  const shared = loadedOrNull();
  if (shared === null || typeof shared.addon.listen !== 'function') return 'ENOTSUP';
  const id = nextListenerId++;
  const r = shared.addon.listen(id, address, port, backlog, false, reusePort, peekMax);
  if (r < 0) return errnoName(-r) ?? `errno ${-r}`;
  shared.listeners.set(id, sink);
  const addon = shared.addon;
  return {
    port: r,
    peek(max: number): void {
      if (shared.listeners.has(id)) addon.listenPeek?.(id, max);
    },
    close(): void {
      if (!shared.listeners.delete(id)) return;
      addon.unlisten?.(id);
    },
  };
}
