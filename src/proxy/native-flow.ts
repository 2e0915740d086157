// A client the addon accepted (src/proxy/splice.ts `spliceListen`): the addon holds its socket from
// accept to close, connects it to the backend JS chooses, and relays with splice. JS holds no socket:
// it decides (the backend, each failover, a refusal) and accounts, through the Flow it shares with the
// JS path. One owner, one state: every transition comes from the addon's events in order.

import { normaliseClientIp, type Choice } from '../balance/select.ts';
import type { ListenerEntry } from '../config/table.ts';
import { Flow, type FlowHost } from './flow.ts';
import { HEADER_MAX } from './proxy-protocol.ts';
import type { AcceptedConn, AcceptedOwner, SpliceHandle, SpliceResult } from './splice.ts';

export class NativeFlow extends Flow implements AcceptedOwner {
  private readonly conn: AcceptedConn;
  /** The client is gone (its reset or close reported by the addon). */
  private gone = false;
  /** accept_proxy: bytes of the client's already given to the header parser (the addon peeks them all each time). */
  private peekedBytes = 0;

  constructor(conn: AcceptedConn, address: string, port: number, entry: ListenerEntry, host: FlowHost) {
    super(entry, host, normaliseClientIp(address), port);
    this.conn = conn;
    this.spliced = conn;
    conn.owner = this;
    if (entry.acceptProxy) {
      this.readProxyHeader(entry.acceptProxy.timeoutMs);
      return;
    }
    if (conn.peeking) conn.skip(0); // accepted while its listener still read PROXY headers (a reload since)
    this.route();
  }

  // accept_proxy: the addon peeks at what the client sent, leaving it in the socket; once the header is
  // complete it drops the header's bytes, and what came after them is spliced to the backend first.
  protected startHeaderRead(): void {
    if (!this.conn.peeking) this.conn.peek(HEADER_MAX); // accepted before a reload turned accept_proxy on
  }

  protected stopHeaderRead(): void {}

  override rejectProxy(why: string | null): void {
    // What it sent is dropped before the close, so that the client sees an orderly close (a FIN), as on
    // the Node path, which had read it: closing a socket with unread bytes would reset it.
    if (this.awaitingProxyHeader && this.peekedBytes > 0) this.conn.skip(this.peekedBytes);
    super.rejectProxy(why);
  }

  protected headerRead(length: number): void {
    this.conn.skip(length);
  }

  nativePeeked(handle: SpliceHandle, bytes: Buffer, fin: boolean): void {
    if (handle !== this.conn || !this.awaitingProxyHeader) return;
    if (bytes.length > this.peekedBytes) {
      const fresh = bytes.subarray(this.peekedBytes);
      this.peekedBytes = bytes.length;
      this.proxyData(fresh);
    }
    if (fin) this.rejectProxy(null); // no more will come (a no-op once the header was complete)
  }

  override nativeEnded(handle: SpliceHandle, r: SpliceResult): void {
    if (handle === this.conn && this.awaitingProxyHeader) {
      // Closed having sent nothing (more), or reset, while its header was read: a rejected header, as on
      // the Node path.
      this.rejectProxy(r.end === 'client-close' ? null : 'connection closed before a complete PROXY header');
      return;
    }
    super.nativeEnded(handle, r);
  }

  protected localEndpoint(): { addr: string; port: number } {
    return this.conn.localAddress() ?? { addr: '', port: 0 }; // null: it ended, and nothing is sent
  }

  sentBytes(): number {
    return this.conn.sent();
  }

  rcvdBytes(): number {
    return this.conn.rcvd();
  }

  protected connectBackend(choice: Choice): void {
    const failed = this.conn.connect(this.nativeTarget(choice), this.proxyHeaderFor(choice));
    if (failed !== null) this.connectFailed(failed);
  }

  nativeConnectFailed(handle: SpliceHandle, errno: string): void {
    if (handle === this.conn) this.connectFailed(errno);
  }

  // The attempt in the addon is its own: a failed one is already dropped there, and the end aborts the
  // whole connection (closeSockets).
  protected dropBackend(): void {}

  protected handedOver(): void {}

  // The addon keeps holding the client, unread (what it sends waits in its socket's buffer, so a waiter
  // costs no memory here), and ends it if it resets or closes before sending anything.
  protected watchWhileQueued(): void {
    this.conn.wait();
  }

  protected closeClient(): void {
    this.gone = true;
    this.conn.abort();
  }

  protected get clientGone(): boolean {
    return this.gone || this.conn.ended;
  }

  protected closeSockets(): void {
    this.conn.abort();
  }
}
