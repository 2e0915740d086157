// One client connection: choose a backend, connect (failing over), then relay bytes both ways.
//
// The data path is socket to socket: each chunk read from one side is handed, as the same Buffer, to the
// other side's write(); when that write reports a full buffer the reading side pauses until 'drain'.
// So nothing is copied, at most one high-water mark per direction is buffered, and a slow reader slows
// the sender instead of growing memory. Until a backend is connected the client is not read at all
// (the listener pauses on accept), except while it waits in a queue, where a bounded amount is kept so
// that a client that leaves can be noticed. Handlers are shared functions (no closures per
// connection); each socket points back at its relay.

import net, { type Socket } from 'node:net';
import { chooseBackend, normaliseClientIp, someBackendFull, type Choice } from '../balance/select.ts';
import type { BackendState, LiveFlow, ListenerState, Waiter } from '../balance/state.ts';
import type { ListenerEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code } from '../errors.ts';
import { applyCheck } from '../health/monitor.ts';
import type { Logger } from '../log.ts';
import { balanceDump, hexDump, type Direction } from './dump.ts';

export type EndReason =
  | 'client-close'
  | 'backend-close'
  | 'reset'
  | 'idle-timeout'
  | 'connect-failed'
  | 'no-backend'
  | 'queue-timeout'
  | 'queue-full'
  | 'shutdown';

/** What a relay needs from the listener that accepted it. */
export interface RelayHost {
  readonly state: ListenerState;
  readonly log: Logger;
  readonly accessLog: boolean;
  /** Packet dump sink, or null (then the relay installs no dump handlers at all). */
  readonly dump: ((text: string) => void) | null;
  relayFinished(relay: Relay): void;
  /** A health transition happened on the data path: queued clients may now have a backend. */
  healthChanged(): void;
  /** Connect deadlines: one timer per listener sweeps them, instead of a timer per connection. */
  connectStarted(relay: Relay): void;
  connectEnded(relay: Relay): void;
}

interface RelaySocket extends Socket {
  lbRelay?: Relay;
}

/** Most bytes kept from a queued client before reading from it pauses. */
const QUEUED_BYTES_MAX = 64 * 1024;

let nextId = 1;

export class Relay implements LiveFlow, Waiter {
  readonly id = nextId++;
  readonly client: RelaySocket;
  readonly entry: ListenerEntry;
  readonly host: RelayHost;
  readonly clientIp: string;
  readonly clientPort: number;
  readonly startedAt = Date.now();
  backend: RelaySocket | null = null;
  choice: Choice | null = null;
  /** Backends that failed for this client (allocated on the first failure only). */
  tried: BackendState[] | null = null;
  connected = false;
  reason: EndReason | null = null;
  queuedAt = 0;
  /** When the connect in progress times out (ms since epoch), for the listener's sweep. */
  connectDeadline = 0;
  /** Set once backpressure happened: from then on 'drain' resumes the paused side. */
  private drainWatched = false;
  prevL: LiveFlow | null = null;
  nextL: LiveFlow | null = null;
  prevB: LiveFlow | null = null;
  nextB: LiveFlow | null = null;
  prevC: LiveFlow | null = null;
  nextC: LiveFlow | null = null;
  private queueDeadline = 0;
  private queueTimer: NodeJS.Timeout | null = null;
  /** Bytes a queued client sent before its backend was connected, and whether it already sent EOF. */
  private early: Buffer[] | null = null;
  private earlyBytes = 0;
  clientEnded = false;
  private connectStarted = 0;
  private closedSockets = 0;
  private finished = false;

  constructor(client: Socket, entry: ListenerEntry, host: RelayHost) {
    this.client = client;
    this.entry = entry;
    this.host = host;
    this.clientIp = normaliseClientIp(client.remoteAddress ?? '');
    this.clientPort = client.remotePort ?? 0;
    this.client.lbRelay = this;
    const st = host.state;
    st.cur++;
    st.total++;
    if (st.cur > st.max) st.max = st.cur;
    st.open(this);
    client.on('error', onClientError);
    client.on('close', onClientClose);
    this.connectNext();
  }

  sentBytes(): number {
    return this.client.bytesRead;
  }

  rcvdBytes(): number {
    return this.backend?.bytesRead ?? 0;
  }

  get queued(): boolean {
    return this.queueTimer !== null;
  }

  /** Picks the next candidate and connects; queues the client or closes it when none is free. */
  connectNext(): void {
    const now = Date.now();
    const choice = chooseBackend(this.entry, this.host.state, this.clientIp, now, this.tried);
    if (choice !== null) {
      this.connectTo(choice);
      return;
    }
    const queue = this.entry.queue;
    if (queue && someBackendFull(this.entry, this.host.state, now)) {
      const st = this.host.state;
      if (st.queue.length < queue.max) {
        this.enqueue(queue.timeoutMs);
        return;
      }
      st.queueRejected++;
      this.refuse('queue-full');
      return;
    }
    this.refuse(this.tried === null ? 'no-backend' : 'connect-failed');
  }

  /** balance compatible: the client sees the accepted connection close. */
  private refuse(reason: EndReason): void {
    this.reason = reason;
    this.host.state.noBackend++;
    this.host.log.log('warn', reason === 'queue-full' || reason === 'queue-timeout' ? reason : 'no-backend', {
      code: Code.NO_BACKEND,
      listener: this.entry.name,
      client: formatHostPort(this.clientIp, this.clientPort),
      tried: this.tried?.length ?? 0,
    });
    this.client.destroy();
  }

  private enqueue(timeoutMs: number): void {
    const st = this.host.state;
    const now = Date.now();
    if (this.queuedAt === 0) {
      this.queuedAt = now;
      this.queueDeadline = now + timeoutMs;
      st.queue.push(this);
    } else {
      // Served, but its backend failed to connect: it keeps its place at the head and its deadline.
      st.queue.unshift(this);
    }
    if (st.queue.length > st.queueMax) st.queueMax = st.queue.length;
    this.queueTimer = setTimeout(onQueueTimeout, Math.max(0, this.queueDeadline - now), this);
    if (this.early === null) {
      // Read while waiting (bounded) so that a client that gives up is noticed and leaves the queue.
      this.early = [];
      this.client.on('data', keepWhileQueued);
      this.client.on('end', onEndWhileQueued);
      this.client.resume();
    }
  }

  /** Leaves the queue (served, timed out, or gone); returns false if it was not queued. */
  leaveQueue(): boolean {
    if (this.queueTimer === null) return false;
    clearTimeout(this.queueTimer);
    this.queueTimer = null;
    const q = this.host.state.queue;
    const i = q.indexOf(this);
    if (i >= 0) q.splice(i, 1);
    return true;
  }

  queueTimedOut(): void {
    if (!this.leaveQueue()) return;
    this.host.state.queueTimeouts++;
    this.refuse('queue-timeout');
  }

  connectTo(choice: Choice): void {
    this.choice = choice;
    const st = choice.state;
    st.picked();
    st.cur++;
    if (st.cur > st.max) st.max = st.cur;
    this.connectStarted = Date.now();
    const backend: RelaySocket = net.connect({
      host: choice.entry.address,
      port: choice.entry.port,
      localAddress: this.entry.source ?? undefined,
      allowHalfOpen: true,
      noDelay: true,
      keepAlive: true,
    });
    backend.lbRelay = this;
    this.backend = backend;
    if (this.entry.connectTimeoutMs > 0) {
      this.connectDeadline = this.connectStarted + this.entry.connectTimeoutMs;
      this.host.connectStarted(this);
    }
    backend.on('connect', onBackendConnect);
    backend.on('error', onBackendError);
    backend.on('close', onBackendClose);
  }

  /** The current backend attempt failed before connecting: eject it and fail over. */
  connectFailed(reason: string): void {
    const backend = this.backend!;
    const choice = this.choice!;
    this.host.connectEnded(this);
    backend.lbRelay = undefined; // its late events no longer concern this relay
    backend.destroy();
    this.backend = null;
    this.choice = null;
    const st = choice.state;
    const now = Date.now();
    st.cur--;
    st.connectFailed(now, reason, this.entry.autodisable);
    this.host.log.log('warn', 'connect-failed', {
      code: Code.CONNECT_FAILED,
      listener: this.entry.name,
      group: choice.group,
      backend: choice.entry.key,
      reason,
      ...(this.entry.autodisable ? { action: 'autodisabled until enabled by an operator' } : { retry_ms: st.backoffMs }),
    });
    const result = {
      ok: false,
      status: reason === 'ETIMEDOUT' ? ('L4TOUT' as const) : ('L4CON' as const),
      durationMs: now - this.connectStarted,
      detail: reason,
    };
    if (applyCheck(this.host.log, this.entry.name, choice.group, choice.entry, st, result, 'traffic')) this.host.healthChanged();
    if (this.client.destroyed) {
      this.finish();
      return;
    }
    (this.tried ??= []).push(st);
    this.connectNext();
  }

  connectSucceeded(): void {
    const backend = this.backend!;
    const client = this.client;
    const st = this.choice!.state;
    this.connected = true;
    this.host.connectEnded(this);
    st.connectSucceeded(this.connectStarted);
    st.total++;
    st.open(this);
    if (this.entry.idleTimeoutMs > 0) {
      // Reads and writes both reset a socket's timer, so the client socket alone sees traffic either way.
      client.setTimeout(this.entry.idleTimeoutMs);
      client.on('timeout', onIdleTimeout);
    }
    const dumping = this.host.dump !== null;
    backend.on('data', dumping ? dumpToClient : forwardToClient);
    backend.on('end', onBackendEnd);
    if (this.early !== null) this.flushEarly();
    if (this.clientEnded) {
      backend.end();
      return;
    }
    client.on('data', dumping ? dumpToBackend : forwardToBackend);
    client.on('end', onClientEnd);
    client.resume();
  }

  /** Hands what a queued client sent to its backend, in order, before live forwarding starts. */
  private flushEarly(): void {
    const client = this.client;
    client.removeListener('data', keepWhileQueued);
    client.removeListener('end', onEndWhileQueued);
    for (const chunk of this.early!) {
      if (this.host.dump !== null) this.dump('c>b', chunk);
      if (!this.backend!.write(chunk)) this.watchDrain();
    }
    this.early = null;
  }

  /** The first time a write reports a full buffer: from now on 'drain' resumes the side that paused. */
  watchDrain(): void {
    if (this.drainWatched) return;
    this.drainWatched = true;
    this.client.on('drain', onClientDrain);
    this.backend!.on('drain', onBackendDrain);
  }

  keepEarly(chunk: Buffer): void {
    this.early!.push(chunk);
    this.earlyBytes += chunk.length;
    if (this.earlyBytes >= QUEUED_BYTES_MAX) this.client.pause();
  }

  /** EOF while queued: a client that sent nothing has left; one that sent a request half-closed. */
  endWhileQueued(): void {
    this.clientEnded = true;
    this.reason ??= 'client-close';
    if (this.earlyBytes === 0 && this.leaveQueue()) {
      this.host.state.queueAbandoned++;
      this.reason = 'client-close';
      this.client.destroy();
    }
  }

  /** Ends the relay at once (idle timeout, shutdown). */
  abort(reason: EndReason): void {
    this.reason ??= reason;
    this.client.destroy();
    this.backend?.destroy();
  }

  /** One side was reset: the other side is reset too (RST, not FIN), so it cannot mistake a cut for an end. */
  reset(from: RelaySocket): void {
    this.reason ??= 'reset';
    const other = from === this.client ? this.backend : this.client;
    from.destroy();
    if (other && !other.destroyed) other.resetAndDestroy();
  }

  socketClosed(): void {
    this.closedSockets++;
    if (this.closedSockets === (this.backend === null ? 1 : 2)) this.finish();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.leaveQueue()) this.host.state.queueAbandoned++;
    const st = this.host.state;
    st.cur--;
    st.close(this);
    const choice = this.choice;
    if (choice) {
      choice.state.cur--;
      if (this.connected) choice.state.close(this);
      if (choice.state.draining && choice.state.cur === 0) {
        this.host.log.log('info', 'drained', { listener: this.entry.name, group: choice.group, backend: choice.entry.key });
      }
    }
    if (this.host.accessLog) {
      const ip = this.clientIp;
      this.host.log.access({
        id: this.id,
        listener: this.entry.name,
        client: ip.includes(':') ? `[${ip}]:${this.clientPort}` : `${ip}:${this.clientPort}`,
        backend: choice?.entry.key ?? '-',
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

  dump(dir: Direction, chunk: Uint8Array): void {
    const format = this.entry.packetDump;
    this.host.dump!(format === 'hex' ? hexDump(this.id, dir, chunk) : balanceDump(dir, chunk));
  }
}

// Shared handlers: `this` is the socket, its relay is `lbRelay`.

function onClientError(this: RelaySocket): void {
  const r = this.lbRelay;
  if (r) r.reset(this);
}

function onClientClose(this: RelaySocket): void {
  const r = this.lbRelay;
  if (!r) return;
  if (!r.connected && r.backend) {
    // The client left while we were still connecting: drop the attempt, nothing was relayed.
    r.reason ??= 'client-close';
    r.backend.destroy();
  }
  r.socketClosed();
}

function onBackendError(this: RelaySocket, err: NodeJS.ErrnoException): void {
  const r = this.lbRelay;
  if (!r || r.backend !== this) return;
  if (!r.connected) r.connectFailed(err.code ?? err.message);
  else r.reset(this);
}

function onBackendConnect(this: RelaySocket): void {
  const r = this.lbRelay;
  if (r && r.backend === this) r.connectSucceeded();
}

function onBackendClose(this: RelaySocket): void {
  const r = this.lbRelay;
  if (r && r.backend === this) r.socketClosed();
}

function onIdleTimeout(this: RelaySocket): void {
  this.lbRelay?.abort('idle-timeout');
}

function onQueueTimeout(relay: Relay): void {
  relay.queueTimedOut();
}

function keepWhileQueued(this: RelaySocket, chunk: Buffer): void {
  this.lbRelay!.keepEarly(chunk);
}

function onEndWhileQueued(this: RelaySocket): void {
  this.lbRelay!.endWhileQueued();
}

function forwardToBackend(this: RelaySocket, chunk: Buffer): void {
  const r = this.lbRelay!;
  if (!r.backend!.write(chunk)) {
    this.pause();
    r.watchDrain();
  }
}

function forwardToClient(this: RelaySocket, chunk: Buffer): void {
  const r = this.lbRelay!;
  if (!r.client.write(chunk)) {
    this.pause();
    r.watchDrain();
  }
}

function dumpToBackend(this: RelaySocket, chunk: Buffer): void {
  this.lbRelay!.dump('c>b', chunk);
  forwardToBackend.call(this, chunk);
}

function dumpToClient(this: RelaySocket, chunk: Buffer): void {
  this.lbRelay!.dump('b>c', chunk);
  forwardToClient.call(this, chunk);
}

/** Half-close: the client's FIN becomes a FIN to the backend; the other direction keeps flowing. */
function onClientEnd(this: RelaySocket): void {
  const r = this.lbRelay!;
  r.reason ??= 'client-close';
  if (r.host.dump !== null && r.entry.packetDump === 'balance') r.dump('c>b', EMPTY);
  r.backend!.end();
}

function onBackendEnd(this: RelaySocket): void {
  const r = this.lbRelay!;
  r.reason ??= 'backend-close';
  if (r.host.dump !== null && r.entry.packetDump === 'balance') r.dump('b>c', EMPTY);
  r.client.end();
}

function onClientDrain(this: RelaySocket): void {
  this.lbRelay!.backend?.resume();
}

function onBackendDrain(this: RelaySocket): void {
  this.lbRelay!.client.resume();
}

const EMPTY = new Uint8Array(0);
