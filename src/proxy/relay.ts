// One client connection: choose a backend, connect (failing over), then relay bytes both ways.
//
// A relay goes through explicit phases, each entered once: new → (queued ↔ connecting)* → relaying →
// done. Every event handler checks the phase it belongs to, so a late event (a connect timeout after the
// client left, an error after a reset) cannot run a transition twice: slots are released once, a
// backend is ejected only for a connect that really failed, and `done` is reached whatever the sockets do.
//
// The data path is socket to socket: each chunk read from one side is handed, as the same Buffer, to the
// other side's write(); when that write reports a full buffer the reading side pauses until 'drain'.
// So nothing is copied, at most one high-water mark per direction is buffered, and a slow reader slows
// the sender instead of growing memory. Until a backend is connected the client is not read at all
// (the listener pauses on accept), except while it waits in a queue, where a bounded amount is kept so
// that a client that leaves can be noticed. Handlers are shared functions (no closures per
// connection); each socket points back at its relay.

import net, { type Socket } from 'node:net';
import { normaliseClientIp, type Choice } from '../balance/select.ts';
import { sendProxyOf, type ListenerEntry } from '../config/table.ts';
import { Flow, type FlowHost } from './flow.ts';
import { balanceDump, hexDump, type Direction } from './dump.ts';
import { watchPaused } from './paused-watch.ts';
import { spliceConnect, spliceRelay } from './splice.ts';

export type { EndReason, Phase } from './flow.ts';

/** What a relay needs from the listener that accepted it, beyond what every connection needs. */
export interface RelayHost extends FlowHost {
  /** Packet dump sink, or null (then the relay installs no dump handlers at all). */
  readonly dump: ((text: string) => void) | null;
  /** Relay connected pairs with splice(2) (never with a packet dump). */
  readonly splice: boolean;
  /** The client's place under maxconn is free (it was admitted at accept). */
  clientReleased(): void;
  /** Connect deadlines: one timer per listener sweeps them, instead of a timer per connection. */
  connectStarted(relay: Relay): void;
  connectEnded(relay: Relay): void;
}

interface RelaySocket extends Socket {
  lbRelay?: Relay;
}

/** Most bytes kept from a queued client before reading from it pauses. */
const QUEUED_BYTES_MAX = 64 * 1024;


export class Relay extends Flow {
  readonly client: RelaySocket;
  declare readonly host: RelayHost;
  backend: RelaySocket | null = null;
  /** When the connect in progress times out (ms since epoch), for the listener's sweep. */
  connectDeadline = 0;
  /** Set once backpressure happened: from then on 'drain' resumes the paused side. */
  private drainWatched = false;
  /** Bytes a queued client sent before its backend was connected. */
  private early: Buffer[] | null = null;
  private earlyBytes = 0;
  clientEnded = false;
  /** Set once reading while queued started (the `early` buffer may also hold bytes after a PROXY header). */
  private readingQueued = false;
  /** onEndWhileQueued is on the client (a paused socket still emits 'end' once its buffer is empty). */
  private endWatched = false;

  constructor(client: Socket, entry: ListenerEntry, host: RelayHost) {
    super(entry, host, normaliseClientIp(client.remoteAddress ?? ''), client.remotePort ?? 0);
    this.client = client;
    this.client.lbRelay = this;
    client.on('error', onClientError);
    client.on('close', onClientClose);
    if (entry.acceptProxy) this.readProxyHeader(entry.acceptProxy.timeoutMs);
    else this.route();
  }

  // --- accept_proxy: the header's bytes come through the paused socket -------------------------------

  protected startHeaderRead(): void {
    this.client.on('data', onProxyData);
    this.client.on('end', onProxyEnd);
    this.client.resume();
  }

  protected stopHeaderRead(): void {
    this.client.removeListener('data', onProxyData);
    this.client.removeListener('end', onProxyEnd);
    this.client.pause();
  }

  protected headerRead(_length: number, rest: Buffer): void {
    // The header was read in flowing mode: its FIN may already be in, and 'end' fires even while paused.
    this.watchEnd();
    if (rest.length > 0) {
      // The client's first bytes came with the header: they go to the backend first (the queued path's buffer).
      this.early = [rest];
      this.earlyBytes = rest.length;
    }
  }

  protected localEndpoint(): { addr: string; port: number } {
    return { addr: this.client.localAddress ?? '', port: this.client.localPort ?? 0 };
  }

  sentBytes(): number {
    return this.spliced !== null ? this.spliced.sent() : this.client.bytesRead;
  }

  rcvdBytes(): number {
    return this.spliced !== null ? this.spliced.rcvd() : (this.backend?.bytesRead ?? 0);
  }

  /** Read while waiting (bounded) so that a client that gives up is noticed and leaves the queue. */
  protected watchWhileQueued(): void {
    if (this.readingQueued) return;
    this.readingQueued = true;
    this.early ??= [];
    this.client.on('data', keepWhileQueued);
    this.watchEnd();
    this.client.resume();
  }

  private watchEnd(): void {
    if (this.endWatched) return;
    this.endWatched = true;
    this.client.on('end', onEndWhileQueued);
  }

  protected connectBackend(choice: Choice): void {
    const st = choice.state;
    if (this.host.splice && this.connectNatively(choice)) return;
    let backend: RelaySocket;
    try {
      backend = net.connect({
        host: choice.entry.address,
        port: choice.entry.port,
        localAddress: this.entry.source ?? undefined,
        allowHalfOpen: true,
        noDelay: true,
        keepAlive: true,
      });
    } catch (err) {
      // A synchronous throw (a bad local address): a local fault, never the backend's.
      this.choice = null;
      st.release();
      this.host.slotFreed();
      this.host.log.log('error', 'connect-error', { listener: this.entry.name, error: (err as Error).message });
      this.reason = 'local-error';
      this.phase = 'done';
      this.client.destroy();
      this.finish();
      return;
    }
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

  /**
   * The splice path: the addon connects (no net.Socket for the backend) and relays once connected. What
   * it cannot take (bytes already read from the client, a PROXY header to send first, a backend address
   * that is not an IP literal) connects in JS. A connect that fails at once fails over here as any.
   */
  private connectNatively(choice: Choice): boolean {
    if (this.readingQueued || this.early !== null || this.clientEnded || sendProxyOf(this.entry.groups[choice.group]!, choice.entry) !== null) return false;
    const r = spliceConnect(this.client, this.nativeTarget(choice), this);
    if (r === null) return false;
    if (typeof r === 'string') this.connectFailed(r);
    else this.spliced = r;
    return true;
  }

  protected handedOver(): void {
    // The addon's duplicate of the client carries the connection from now on.
    this.client.lbRelay = undefined;
    this.client.destroy();
  }

  protected dropBackend(): void {
    if (this.backend !== null) {
      const backend = this.backend;
      this.host.connectEnded(this);
      backend.lbRelay = undefined; // its late events no longer concern this relay
      backend.destroy();
      this.backend = null;
    } else if (this.spliced !== null) {
      this.spliced.abort(); // a native connect in flight: its 'aborted' end no longer concerns this relay
      this.spliced = null;
    }
  }

  protected closeClient(): void {
    this.client.destroy();
  }

  protected get clientGone(): boolean {
    return this.client.destroyed;
  }

  protected closeSockets(): void {
    this.client.destroy();
    this.backend?.destroy();
  }

  connectSucceeded(): void {
    if (this.phase !== 'connecting') return;
    if (this.client.destroyed) {
      // The client went away while this connect was in flight (its events not delivered yet): nothing to relay.
      this.end();
      return;
    }
    const backend = this.backend!;
    const client = this.client;
    const choice = this.choice!;
    this.host.connectEnded(this);
    this.connectedTo(choice);
    const header = this.proxyHeaderFor(choice);
    if (this.host.splice && !this.readingQueued && !this.clientEnded) {
      if (header === null && this.early === null) {
        if (this.trySplice()) return;
      } else {
        this.writePrefaceThenSplice(header);
        return;
      }
    }
    if (header !== null) backend.write(header);
    this.relayInJs();
  }

  /**
   * The PROXY header and the bytes that came with the client's header must reach the backend before
   * the kernel relays the rest, and a socket is handed to splice only with nothing buffered in JS: so
   * they are written first, and the pair is handed over once the write is done (a few microseconds on
   * loopback; neither socket is read meanwhile). If it cannot be handed over then, the JS relay runs.
   */
  private writePrefaceThenSplice(header: Buffer | null): void {
    const backend = this.backend!;
    const chunks = header === null ? this.early! : this.early === null ? [header] : [header, ...this.early];
    this.early = null;
    this.earlyBytes = 0;
    const last = chunks.length - 1;
    chunks.forEach((chunk, i) => backend.write(chunk, i === last ? () => this.prefaceWritten() : undefined));
  }

  private prefaceWritten(): void {
    if (this.phase !== 'relaying' || this.spliced !== null || this.backend === null) return;
    if (this.client.destroyed || this.backend.destroyed) return; // its error or close event ends the relay
    if (this.trySplice()) return;
    this.relayInJs();
  }

  /** The JavaScript relay: socket to socket, with backpressure. */
  private relayInJs(): void {
    const client = this.client;
    const backend = this.backend!;
    if (this.endWatched) {
      client.removeListener('end', onEndWhileQueued);
      this.endWatched = false;
    }
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

  /**
   * Hands the connected pair to the splice(2) relay. The JS sockets are let go (their late events no
   * longer concern this relay) and the connection lives on in the addon, which reports its end. False
   * (sockets untouched) when this pair cannot be handed over: the JS relay takes it.
   */
  private trySplice(): boolean {
    const client = this.client;
    const backend = this.backend!;
    try {
      client.lbRelay = undefined;
      backend.lbRelay = undefined;
      this.spliced = spliceRelay(client, backend, { idleTimeoutMs: this.entry.idleTimeoutMs }, (r) => this.splicedEnd(r));
      return true;
    } catch {
      client.lbRelay = this;
      backend.lbRelay = this;
      return false;
    }
  }

  /** Hands what a queued client sent to its backend, in order, before live forwarding starts. */
  private flushEarly(): void {
    const client = this.client;
    this.readingQueued = false;
    client.removeListener('data', keepWhileQueued);
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
    if (this.earlyBytes >= QUEUED_BYTES_MAX) {
      this.client.pause();
      watchPaused(this.client);
    }
  }

  /** EOF while queued: a client that sent nothing has left; one that sent a request half-closed. */
  endWhileQueued(): void {
    this.clientEnded = true;
    this.reason ??= 'client-close';
    if (this.earlyBytes === 0 && this.phase === 'queued') {
      // end() leaves the queue and counts it once; the 'close' that follows then finds the relay done.
      this.reason = 'client-close';
      this.end();
    }
  }

  /** One side was reset: the other side is reset too (RST, not FIN), so it cannot mistake a cut for an end. */
  reset(from: RelaySocket): void {
    this.reason ??= 'reset';
    const other = from === this.client ? this.backend : this.client;
    from.destroy();
    if (other && !other.destroyed) {
      // libuv cannot reset a socket whose write side is shut down (or shutting down): it refuses with
      // EINVAL and Node then never closes the handle. Such a socket has already said FIN; close it.
      if (other.writableEnded || other.connecting) other.destroy();
      else other.resetAndDestroy();
    }
    this.armCloseGrace();
  }

  /** A socket reported its close: the relay ends when every socket it still has is closed. */
  socketClosed(): void {
    if (this.phase === 'done') return;
    if (!this.client.closed) return;
    if (this.backend !== null && !this.backend.closed) return;
    this.end();
  }

  protected override finishing(): void {
    this.host.clientReleased();
    this.host.connectEnded(this);
  }

  dump(dir: Direction, chunk: Uint8Array): void {
    const format = this.entry.packetDump;
    this.host.dump!(format === 'hex' ? hexDump(this.id, dir, chunk) : balanceDump(dir, chunk));
  }
}

// Shared handlers: `this` is the socket, its relay is `lbRelay`.

function onClientError(this: RelaySocket): void {
  const r = this.lbRelay;
  if (!r || r.phase === 'done') return;
  if (r.phase === 'relaying') r.reset(this);
  else if (r.phase === 'new') this.destroy(); // reading a PROXY header: 'close' follows and rejects it
  else {
    // Queued or connecting: the client is gone, so the relay ends now, in this one transition. Node emits
    // 'close' only in a later phase of the loop, and a backend connect that completes in between (both
    // events in one poll) would otherwise start a relay for a client that no longer exists, holding its
    // slot and its backend connection for good.
    r.reason ??= 'reset';
    r.end();
  }
}

function onClientClose(this: RelaySocket): void {
  const r = this.lbRelay;
  if (!r || r.phase === 'done') return;
  if (r.awaitingProxyHeader && r.reason === null) {
    r.rejectProxy('connection closed before a complete PROXY header');
    return;
  }
  if (r.phase === 'relaying') r.socketClosed();
  else r.end(); // left while queued or while its backend was connecting: nothing was relayed
}

function onBackendError(this: RelaySocket, err: NodeJS.ErrnoException): void {
  const r = this.lbRelay;
  if (!r || r.backend !== this) return;
  if (r.phase === 'connecting') r.connectFailed(err.code ?? err.message);
  else if (r.phase === 'relaying') r.reset(this);
}

function onBackendConnect(this: RelaySocket): void {
  const r = this.lbRelay;
  if (r && r.backend === this) r.connectSucceeded();
}

function onBackendClose(this: RelaySocket): void {
  const r = this.lbRelay;
  if (r && r.backend === this && r.phase === 'relaying') r.socketClosed();
}

function onIdleTimeout(this: RelaySocket): void {
  this.lbRelay?.abort('idle-timeout');
}

function onProxyData(this: RelaySocket, chunk: Buffer): void {
  this.lbRelay?.proxyData(chunk);
}

function onProxyEnd(this: RelaySocket): void {
  this.lbRelay?.rejectProxy(null);
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
    watchPaused(this);
  }
}

function forwardToClient(this: RelaySocket, chunk: Buffer): void {
  const r = this.lbRelay!;
  if (!r.client.write(chunk)) {
    this.pause();
    r.watchDrain();
    watchPaused(this);
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
