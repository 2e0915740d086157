// What every client connection goes through, whichever side holds its sockets: choose a backend (taking
// its slot), connect, fail over, relay, end; the one place its counts and slots are given back.
//
// Two kinds of connection share it:
// - Relay (relay.ts): the client is a net.Socket (accepted by Node); the backend is connected in JS or by
//   the addon; bytes move in JS or by splice. Packet dumps live there.
// - NativeFlow (native-flow.ts): the addon accepted the client and holds it, queued or not; JS only
//   decides (backend, queue, failover, refusal) and accounts. No net.Socket exists for it.
// The queue (its order, timeouts, counts) and the PROXY protocol (the header read before anything is
// chosen, the header written to the backend first) are the same for both: only how a waiter is watched,
// how the header's bytes are read and how ours reaches the backend differ.
//
// Phases are entered once each: new → (queued ↔ connecting)* → relaying → done. Every event checks the
// phase it belongs to, so a late event cannot run a transition twice: slots are released once, a backend
// is ejected only for a connect that really failed, and `done` is reached whatever the sockets do.

import { chooseBackend, normaliseClientIp, someBackendFull, type Choice } from '../balance/select.ts';
import type { LiveFlow, ListenerState, Waiter } from '../balance/state.ts';
import { sendProxyOf, type BackendEntry, type ListenerEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code, LOCAL_ERRORS } from '../errors.ts';
import type { CheckResult } from '../health/state.ts';
import type { Logger } from '../log.ts';
import { encodeProxyHeader, ProxyHeaderParser } from './proxy-protocol.ts';
import type { NativeConnectOwner, NativeTarget, SpliceHandle, SpliceResult } from './splice.ts';

export type EndReason =
  | 'client-close'
  | 'backend-close'
  | 'reset'
  | 'idle-timeout'
  | 'connect-failed'
  | 'no-backend'
  | 'queue-timeout'
  | 'queue-full'
  | 'local-error'
  | 'bad-proxy-header'
  | 'shutdown';

export type Phase = 'new' | 'queued' | 'connecting' | 'relaying' | 'done';

/** What a connection needs from the listener that accepted it. */
export interface FlowHost {
  readonly state: ListenerState;
  readonly log: Logger;
  readonly accessLog: boolean;
  /** A connection id, unique across workers. */
  nextId(): number;
  relayFinished(flow: Flow): void;
  /** A data-path connect result to feed to the backend's health (when it has checks). */
  trafficCheck(flow: Flow, choice: Choice, result: CheckResult): void;
  /** A backend slot was released: queued clients (in any worker) may now get it. */
  slotFreed(): void;
  /** A local resource error (EMFILE...): not the backend's fault; logged once per burst. */
  localError(code: string): void;
  /** The queue: a shared ticket order across workers, one deadline sweep per listener. */
  enqueue(flow: Flow): boolean;
  requeue(flow: Flow): void;
  leaveQueue(flow: Flow): void;
}

/** After a reset or an abort, the longest a connection may take to report its close before it is forced. */
const CLOSE_GRACE_MS = 2000;

export abstract class Flow implements Waiter, NativeConnectOwner {
  readonly id: number;
  readonly entry: ListenerEntry;
  readonly host: FlowHost;
  /** The client's address: the socket's peer, or the source of its PROXY header (accept_proxy). */
  clientIp: string;
  clientPort: number;
  readonly startedAt = Date.now();
  phase: Phase = 'new';
  choice: Choice | null = null;
  /** Slots of the backends that failed for this client (allocated on the first failure only). */
  tried: number[] | null = null;
  reason: EndReason | null = null;
  queuedAt = 0;
  /** Queue order across workers (lower = waited longer). */
  ticket = -1;
  /** When the queue wait ends (ms since epoch), for the listener's sweep. */
  queueDeadline = 0;
  pubSent = 0;
  pubRcvd = 0;
  backendSlot = -1;
  prevL: LiveFlow | null = null;
  nextL: LiveFlow | null = null;
  prevB: LiveFlow | null = null;
  nextB: LiveFlow | null = null;
  prevC: LiveFlow | null = null;
  nextC: LiveFlow | null = null;
  prevQ: LiveFlow | null = null;
  nextQ: LiveFlow | null = null;
  protected connectStarted = 0;
  /** Set when the addon relays (or connects) this connection: bytes and the end come from it. */
  protected spliced: SpliceHandle | null = null;
  private closeTimer: NodeJS.Timeout | null = null;
  /** accept_proxy: the header being read (phase new), and its deadline. */
  private proxyParser: ProxyHeaderParser | null = null;
  private proxyTimer: NodeJS.Timeout | null = null;
  /** The address the client connected to, as its PROXY header gave it (else the socket's own). */
  private proxyDst: { addr: string; port: number } | null = null;

  constructor(entry: ListenerEntry, host: FlowHost, clientIp: string, clientPort: number) {
    this.id = host.nextId();
    this.entry = entry;
    this.host = host;
    this.clientIp = clientIp;
    this.clientPort = clientPort;
    host.state.opened(this);
  }

  abstract sentBytes(): number;
  abstract rcvdBytes(): number;
  /** Starts the connect to `choice` (its slot taken, the phase set). */
  protected abstract connectBackend(choice: Choice): void;
  /** Closes the client side (a refusal, a local error, the end). */
  protected abstract closeClient(): void;
  /** The client is known to be gone (nothing to fail over for). */
  protected abstract get clientGone(): boolean;
  /** The addon took the pair over (a native connect reached its backend). */
  protected abstract handedOver(): void;
  /** Drops the backend side of the connect attempt in progress (its socket or the addon's attempt). */
  protected abstract dropBackend(): void;
  /** Closes what the connection still holds of its own, at its end (the addon's side is aborted here). */
  protected abstract closeSockets(): void;
  /** The client entered the queue: watch it, so that one that gives up is noticed and leaves. */
  protected abstract watchWhileQueued(): void;
  /** accept_proxy: start giving the client's first bytes to proxyData(), each byte once. */
  protected abstract startHeaderRead(): void;
  /** Stop giving them (the header is complete, or rejected). */
  protected abstract stopHeaderRead(): void;
  /** The header took the first `length` bytes; `rest` came after it and goes to the backend first. */
  protected abstract headerRead(length: number, rest: Buffer): void;
  /** The address the client connected to (send_proxy's destination without an accepted header). */
  protected abstract localEndpoint(): { addr: string; port: number };

  // --- accept_proxy: the PROXY header, before anything else ------------------------------------------

  /**
   * Reads the client's PROXY header. Nothing is chosen before it is complete: its source address is the
   * client for hashing, logs and send_proxy.
   */
  protected readProxyHeader(timeoutMs: number): void {
    this.proxyParser = new ProxyHeaderParser();
    this.proxyTimer = setTimeout(onProxyTimeout, timeoutMs, this);
    this.proxyTimer.unref();
    this.startHeaderRead();
  }

  /** The client's next bytes while its header is read. */
  proxyData(chunk: Buffer): void {
    const parser = this.proxyParser;
    if (parser === null || this.phase !== 'new') return;
    const step = parser.push(chunk);
    if (step.state === 'more') return;
    if (step.state === 'error') {
      this.rejectProxy(step.reason);
      return;
    }
    this.stopProxyHeader();
    const a = step.header.addresses;
    if (a !== null) {
      this.clientIp = normaliseClientIp(a.srcAddr);
      this.clientPort = a.srcPort;
      this.proxyDst = { addr: a.dstAddr, port: a.dstPort };
    }
    this.headerRead(step.header.length, step.rest);
    this.route();
  }

  private stopProxyHeader(): void {
    this.proxyParser = null;
    if (this.proxyTimer !== null) clearTimeout(this.proxyTimer);
    this.proxyTimer = null;
    this.stopHeaderRead();
  }

  /** No valid header (malformed, truncated, too slow): closed, counted, never passed on. Null: say what came. */
  rejectProxy(why: string | null): void {
    if (this.phase !== 'new' || this.proxyParser === null) return;
    const parser = this.proxyParser;
    this.stopProxyHeader();
    this.host.state.count('proxyRejected');
    this.host.log.log('warn', 'proxy-header-rejected', {
      code: Code.PROXY_HEADER,
      listener: this.entry.name,
      client: formatHostPort(this.clientIp, this.clientPort),
      reason: why ?? parser.truncated(),
    });
    this.reason = 'bad-proxy-header';
    this.phase = 'done';
    this.closeClient();
    this.finish();
  }

  proxyTimedOut(): void {
    const parser = this.proxyParser;
    if (parser !== null) this.rejectProxy(`${parser.truncated()} within accept_proxy_timeout (${this.entry.acceptProxy?.timeoutMs ?? 0} ms)`);
  }

  get awaitingProxyHeader(): boolean {
    return this.proxyParser !== null;
  }

  /** The PROXY header for this connection's backend, or null when its group (or itself) sends none. */
  protected proxyHeaderFor(choice: Choice): Buffer | null {
    const version = sendProxyOf(this.entry.groups[choice.group]!, choice.entry);
    if (version === null) return null;
    const dst = this.proxyDst ?? this.localEndpoint();
    return encodeProxyHeader(version, { srcAddr: this.clientIp, srcPort: this.clientPort, dstAddr: dst.addr, dstPort: dst.port });
  }

  get connected(): boolean {
    return this.phase === 'relaying';
  }

  get queued(): boolean {
    return this.phase === 'queued';
  }

  /** The client is known: queue it behind earlier waiters, or choose a backend. */
  protected route(): void {
    // Someone queued before this client keeps their place: newcomers queue behind them.
    if (this.entry.queue && this.host.state.queued > 0 && someBackendFull(this.entry, this.host.state, Date.now())) this.queueOrRefuse();
    else this.connectNext();
  }

  /** Picks the next candidate (taking its slot) and connects; queues the client or closes it when none is free. */
  connectNext(): void {
    const choice = chooseBackend(this.entry, this.host.state, this.clientIp, Date.now(), this.tried);
    if (choice !== null) {
      this.connectTo(choice);
      return;
    }
    this.queueOrRefuse();
  }

  /**
   * No backend is free: the client waits in the listener's queue, if it has one and some backend is
   * only full (not down); else it is refused.
   */
  protected queueOrRefuse(): void {
    if (this.entry.queue && someBackendFull(this.entry, this.host.state, Date.now())) {
      if (this.queuedAt !== 0) {
        this.phase = 'queued';
        this.host.requeue(this); // served, but its connect failed: back to its place, never "queue-full"
        return;
      }
      if (this.host.enqueue(this)) {
        this.phase = 'queued';
        this.watchWhileQueued();
        return;
      }
      this.host.state.count('queueRejected');
      this.refuse('queue-full');
      return;
    }
    this.refuse(this.tried === null ? 'no-backend' : 'connect-failed');
  }

  /** The listener's sweep: the wait is over. */
  queueTimedOut(): void {
    if (this.phase !== 'queued') return;
    this.host.state.count('queueTimeouts'); // before the queue shrinks, as in leaveQueue()
    this.host.leaveQueue(this);
    this.refuse('queue-timeout');
  }

  /** Served from the queue with a slot already taken. */
  serve(choice: Choice): void {
    if (this.phase !== 'queued') {
      choice.state.release();
      return;
    }
    this.host.leaveQueue(this);
    this.connectTo(choice);
  }

  /** balance compatible: the client sees the accepted connection close. */
  protected refuse(reason: EndReason): void {
    this.reason = reason;
    this.host.state.count('noBackend');
    this.host.log.log('warn', reason === 'queue-full' || reason === 'queue-timeout' ? reason : 'no-backend', {
      code: Code.NO_BACKEND,
      listener: this.entry.name,
      client: formatHostPort(this.clientIp, this.clientPort),
      tried: this.tried?.length ?? 0,
    });
    this.phase = 'done';
    this.closeClient();
    this.finish();
  }

  connectTo(choice: Choice): void {
    this.phase = 'connecting';
    this.choice = choice;
    choice.state.picked();
    this.connectStarted = Date.now();
    this.connectBackend(choice);
  }

  /** Where the addon connects for `choice`, with this listener's source and timeouts. */
  protected nativeTarget(choice: Choice): NativeTarget {
    const { address, port } = choice.entry;
    return { address, port, source: this.entry.source, connectTimeoutMs: this.entry.connectTimeoutMs, idleTimeoutMs: this.entry.idleTimeoutMs };
  }

  /** Ends the connect attempt in progress (its socket, its slot); the backend's fate is the caller's. */
  protected dropAttempt(): Choice {
    const choice = this.choice!;
    this.dropBackend();
    this.choice = null;
    choice.state.release();
    this.host.slotFreed();
    return choice;
  }

  /** The current backend attempt failed before connecting: eject it and fail over. */
  connectFailed(reason: string): void {
    if (this.phase !== 'connecting') return;
    const choice = this.dropAttempt();
    const now = Date.now();
    if (LOCAL_ERRORS.has(reason)) {
      // Out of file descriptors or memory here: the backend is not to blame, and neither are the others.
      this.host.localError(reason);
      this.reason = 'local-error';
      this.phase = 'done';
      this.closeClient();
      this.finish();
      return;
    }
    const st = choice.state;
    const backoff = st.connectFailed(now, reason, this.entry.autodisable);
    this.host.log.log('warn', 'connect-failed', {
      code: Code.CONNECT_FAILED,
      listener: this.entry.name,
      group: choice.group,
      backend: choice.entry.key,
      reason,
      ...(this.entry.autodisable ? { action: 'autodisabled until enabled by an operator' } : { retry_ms: backoff }),
    });
    this.host.trafficCheck(this, choice, {
      ok: false,
      status: reason === 'ETIMEDOUT' ? 'L4TOUT' : 'L4CON',
      durationMs: now - this.connectStarted,
      detail: reason,
    });
    if (this.clientGone) {
      this.phase = 'done';
      this.finish();
      return;
    }
    (this.tried ??= []).push(st.slot);
    this.connectNext();
  }

  /** The connect reached its backend: the connection counts as the backend's from now on. */
  protected connectedTo(choice: Choice): void {
    const st = choice.state;
    this.phase = 'relaying';
    st.connectSucceeded(this.connectStarted);
    st.live.add(this);
    this.backendSlot = st.slot;
  }

  nativeConnected(handle: SpliceHandle): void {
    if (handle !== this.spliced || this.phase !== 'connecting') return; // dropped meanwhile: its end follows
    this.connectedTo(this.choice!);
    this.handedOver();
  }

  nativeEnded(handle: SpliceHandle, r: SpliceResult): void {
    if (handle !== this.spliced) return;
    if (this.phase !== 'connecting') {
      this.splicedEnd(r);
      return;
    }
    this.spliced = null; // the addon closed its sockets: nothing of this attempt is left to drop
    if (r.end === 'connect-failed') {
      this.connectFailed(r.errno ?? 'ECONNREFUSED');
      return;
    }
    if (r.end === 'error' && r.errno !== null && LOCAL_ERRORS.has(r.errno)) {
      // The addon could not make a backend socket (EMFILE...): this host's limit, never the backend's.
      this.host.localError(r.errno);
      this.reason ??= 'local-error';
    }
    // The client reset before the backend answered, or the attempt was aborted (shutdown).
    this.reason ??= r.end === 'aborted' ? 'shutdown' : 'reset';
    this.end();
  }

  protected splicedEnd(r: SpliceResult): void {
    if (this.phase === 'done') return;
    if (this.phase === 'queued') this.leaveQueue(); // a waiter the addon held: it reset, or left before sending anything
    if (r.end === 'error' && r.errno !== null && LOCAL_ERRORS.has(r.errno)) {
      // No pipe (EMFILE, ENFILE...): this host's limit, logged as such (once per burst), never the peers'.
      this.host.localError(r.errno);
      this.reason ??= 'local-error';
    }
    this.reason ??= r.end === 'aborted' ? 'shutdown' : r.end === 'error' ? 'reset' : r.end;
    this.phase = 'done';
    this.finish();
  }

  /** Ends the connection at once (idle timeout, shutdown). */
  abort(reason: EndReason): void {
    this.reason ??= reason;
    if (this.spliced !== null) this.spliced.abort(); // the addon reports the end
    else this.closeSockets();
    this.armCloseGrace();
  }

  /** Whatever a socket does after being destroyed, the connection ends within CLOSE_GRACE_MS. */
  protected armCloseGrace(): void {
    if (this.closeTimer !== null || this.phase === 'done') return;
    this.closeTimer = setTimeout(onCloseGrace, CLOSE_GRACE_MS, this);
    this.closeTimer.unref();
  }

  /** Leaves the queue before being served: the client gave up. */
  protected leaveQueue(): void {
    // Counted before the queue shrinks (both are shared counters other threads read): whoever sees the
    // client gone from the queue sees it counted too.
    this.host.state.count('queueAbandoned');
    this.host.leaveQueue(this);
  }

  /** Ends the connection now, whatever its sockets report (shutdown's last resort, the close grace). */
  end(): void {
    if (this.phase === 'done') return;
    if (this.phase === 'queued') this.leaveQueue();
    if (this.phase === 'connecting') {
      this.reason ??= 'client-close';
      this.dropAttempt();
    }
    this.phase = 'done';
    this.spliced?.abort();
    this.closeSockets();
    this.finish();
  }

  /** Clears what a subclass keeps running (timers, deadlines) at the end. */
  protected finishing(): void {}

  /** The one place a connection's counts and slots are given back: reached once, from phase done. */
  protected finish(): void {
    if (this.closeTimer !== null) {
      clearTimeout(this.closeTimer);
      this.closeTimer = null;
    }
    if (this.proxyTimer !== null) {
      clearTimeout(this.proxyTimer);
      this.proxyTimer = null;
    }
    this.finishing();
    this.host.state.closed(this);
    const choice = this.choice;
    if (choice) {
      const st = choice.state;
      st.closed(this);
      st.release();
      this.host.slotFreed();
      if (st.draining && st.cur === 0) {
        this.host.log.log('info', 'drained', { listener: this.entry.name, group: choice.group, backend: choice.entry.key });
      }
    }
    if (this.host.accessLog) {
      const ip = this.clientIp;
      this.host.log.access({
        id: this.id,
        listener: this.entry.name,
        client: ip.includes(':') ? `[${ip}]:${this.clientPort}` : `${ip}:${this.clientPort}`,
        backend: choice?.entry.name ?? '-',
        backend_addr: choice ? backendAddr(choice.entry) : '-',
        group: choice?.group ?? '-',
        sent: this.sentBytes(),
        rcvd: this.rcvdBytes(),
        ms: Date.now() - this.startedAt,
        queued_ms: this.queuedAt ? (this.connectStarted || Date.now()) - this.queuedAt : undefined,
        end: this.reason ?? 'client-close',
      });
    }
    this.host.relayFinished(this);
  }
}

/** `ip:port` of each backend entry (tables are immutable: once per entry, not per connection). */
const addrs = new WeakMap<BackendEntry, string>();
function backendAddr(entry: BackendEntry): string {
  let a = addrs.get(entry);
  if (a === undefined) addrs.set(entry, (a = formatHostPort(entry.address, entry.port)));
  return a;
}

function onCloseGrace(flow: Flow): void {
  flow.end();
}

function onProxyTimeout(flow: Flow): void {
  flow.proxyTimedOut();
}
