// A client the addon accepted (src/proxy/splice.ts `spliceListen`): the addon holds its socket from
// accept to close, connects it to the backend JS chooses, and relays with splice. JS holds no socket:
// it decides (the backend, each failover, a refusal) and accounts, through the Flow it shares with the
// JS path. One owner, one state: every transition comes from the addon's events in order.

import { normaliseClientIp, type Choice } from '../balance/select.ts';
import type { ListenerEntry } from '../config/table.ts';
import { Flow, type FlowHost } from './flow.ts';
import type { AcceptedConn, AcceptedOwner, SpliceHandle } from './splice.ts';

export class NativeFlow extends Flow implements AcceptedOwner {
  private readonly conn: AcceptedConn;
  /** The client is gone (its reset or close reported by the addon). */
  private gone = false;

  constructor(conn: AcceptedConn, address: string, port: number, entry: ListenerEntry, host: FlowHost) {
    super(entry, host, normaliseClientIp(address), port);
    this.conn = conn;
    this.spliced = conn;
    conn.owner = this;
    this.route();
  }

  sentBytes(): number {
    return this.conn.sent();
  }

  rcvdBytes(): number {
    return this.conn.rcvd();
  }

  protected connectBackend(choice: Choice): void {
    const failed = this.conn.connect(this.nativeTarget(choice));
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
