// A listening socket for one configured listener: accepts clients and hands each to a Relay.

import { createWriteStream, type WriteStream } from 'node:fs';
import net, { type Server, type Socket } from 'node:net';
import { chooseBackend } from '../balance/select.ts';
import { FlowList, rebuildListenerState, type ListenerState } from '../balance/state.ts';
import type { ListenerEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code, Exit, LbError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { Relay, type RelayHost } from './relay.ts';

/**
 * TCP_NODELAY and SO_KEEPALIVE for every client socket. Linux copies both from the listening socket to
 * each socket it accepts, so they are set once here instead of with two setsockopt(2) calls per
 * connection (measured: a few percent of the connection rate). Node reaches the listening socket only
 * through its handle; where that is not available, each accepted socket gets them as before.
 */
function inheritSocketOptions(server: Server): void {
  const handle = (server as Server & { _handle?: { setNoDelay?(on: boolean): void; setKeepAlive?(on: boolean, delay: number): void } })._handle;
  if (process.platform === 'linux' && typeof handle?.setNoDelay === 'function' && typeof handle.setKeepAlive === 'function') {
    handle.setNoDelay(true);
    handle.setKeepAlive(true, 0);
    return;
  }
  server.on('connection', (socket: Socket) => {
    socket.setNoDelay(true);
    socket.setKeepAlive(true);
  });
}

export class ListenerRuntime implements RelayHost {
  entry: ListenerEntry;
  state: ListenerState;
  readonly log: Logger;
  accessLog: boolean;
  dump: ((text: string) => void) | null = null;
  private dumpFile: WriteStream | null = null;
  private server: Server | null = null;
  private onIdle: (() => void) | null = null;

  constructor(entry: ListenerEntry, log: Logger, accessLog: boolean, state: ListenerState | null = null) {
    this.entry = entry;
    this.log = log;
    this.accessLog = accessLog;
    this.state = rebuildListenerState(entry, state);
    this.setDump();
  }

  /** Binds the listening socket. Rejects with LB_BIND (exit 69) when the address cannot be used. */
  async listen(): Promise<void> {
    this.server = await this.bind(this.entry);
  }

  /**
   * Moves to a new address: the new socket is bound before the old one closes, so a failed move leaves
   * the listener where it was. Only a move to the same port has to close the old socket first.
   */
  async rebind(entry: ListenerEntry, accessLog: boolean): Promise<void> {
    const old = this.server;
    let server: Server;
    try {
      server = await this.bind(entry);
    } catch (err) {
      if (!old || entry.listen.port !== this.entry.listen.port) throw err;
      await this.stopAccepting();
      try {
        server = await this.bind(entry);
      } catch (err2) {
        this.server = await this.bind(this.entry);
        throw err2;
      }
    }
    if (this.server) await this.stopAccepting();
    this.server = server;
    this.update(entry, accessLog);
  }

  private bind(entry: ListenerEntry): Promise<Server> {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
    server.on('connection', (socket: Socket) => this.accept(socket));
    const { host, port } = entry.listen;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        const where = formatHostPort(host, port);
        const exit = err.code === 'EACCES' ? Exit.NOPERM : Exit.UNAVAILABLE;
        reject(new LbError(Code.BIND, `listener ${entry.name}: cannot listen on ${where}: ${err.code ?? err.message}`, exit));
      };
      server.once('error', onError);
      server.listen({ host: host ?? undefined, port, backlog: 511 }, () => {
        server.removeListener('error', onError);
        inheritSocketOptions(server);
        server.on('error', (err) => this.log.log('error', 'listener-error', { listener: entry.name, error: err.message }));
        resolve(server);
      });
    });
  }

  /** The address actually bound (port 0 in the config means "any free port"). */
  address(): { host: string; port: number } | null {
    const a = this.server?.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : null;
  }

  accept(socket: Socket): void {
    new Relay(socket, this.entry, this);
  }

  /** Connects in progress, oldest first, and the one timer that expires them. */
  private readonly connecting = new FlowList<Relay>('C');
  private connectTimer: NodeJS.Timeout | null = null;

  connectStarted(relay: Relay): void {
    this.connecting.add(relay);
    if (this.connectTimer === null) this.armConnectTimer(relay.connectDeadline);
  }

  connectEnded(relay: Relay): void {
    this.connecting.delete(relay);
  }

  private armConnectTimer(deadline: number): void {
    if (this.connectTimer !== null) clearTimeout(this.connectTimer); // a sweep's failover may have armed one
    this.connectTimer = setTimeout(() => this.sweepConnects(), Math.max(1, deadline - Date.now()));
  }

  /** Fails every connect past its deadline, then waits for the earliest one left. */
  private sweepConnects(): void {
    this.connectTimer = null;
    const now = Date.now();
    let next = Infinity;
    for (const relay of this.connecting) {
      if (relay.connectDeadline <= now) relay.connectFailed('ETIMEDOUT'); // removes it from the list
      else if (relay.connectDeadline < next) next = relay.connectDeadline;
    }
    if (next !== Infinity) this.armConnectTimer(next);
  }

  /** A new table: future clients use the new entry; running relays keep the one they started with. */
  update(entry: ListenerEntry, accessLog: boolean): void {
    this.entry = entry;
    this.accessLog = accessLog;
    this.state = rebuildListenerState(entry, this.state);
    this.setDump();
  }

  /** Stops accepting; open connections go on. */
  stopAccepting(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (!server) return Promise.resolve();
    // close() shuts the listening socket at once, but its callback waits for every accepted connection
    // to end: waiting for it would hold up drains and reloads until the last client leaves. The port is
    // free once libuv has closed the handle, on the next turn of the loop.
    server.close();
    return new Promise((resolve) => setImmediate(resolve));
  }

  get connections(): number {
    return this.state.live.size;
  }

  /** Resolves when the last open connection has finished. */
  idle(): Promise<void> {
    if (this.state.live.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.onIdle = resolve;
    });
  }

  closeAll(): void {
    for (const flow of [...this.state.live]) (flow as unknown as Relay).abort('shutdown');
  }

  relayFinished(_relay: Relay): void {
    if (this.state.queue.length > 0) this.serveQueue();
    if (this.onIdle && this.state.live.size === 0) {
      const done = this.onIdle;
      this.onIdle = null;
      done();
    }
  }

  healthChanged(): void {
    if (this.state.queue.length > 0) this.serveQueue();
  }

  /** Gives every slot that is free now to the oldest waiters, as many as there are slots (not one per event). */
  serveQueue(): void {
    const queue = this.state.queue as Relay[];
    const now = Date.now();
    while (queue.length > 0) {
      const head = queue[0]!;
      const choice = chooseBackend(this.entry, this.state, head.clientIp, now, head.tried);
      if (choice === null) break;
      head.leaveQueue();
      head.connectTo(choice);
    }
  }

  async dispose(): Promise<void> {
    await this.stopAccepting();
    // Connects still in progress keep their deadlines: the timer stays until the list is empty.
    const file = this.dumpFile;
    this.dumpFile = null;
    if (file) await new Promise<void>((resolve) => file.end(() => resolve()));
  }

  private setDump(): void {
    const { packetDump, packetDumpFile } = this.entry;
    if (packetDump === 'off') {
      this.dump = null;
      return;
    }
    if (packetDumpFile) {
      if (this.dumpFile?.path !== packetDumpFile) {
        this.dumpFile?.end();
        this.dumpFile = createWriteStream(packetDumpFile, { flags: 'a' });
        this.dumpFile.on('error', (err) => this.log.log('error', 'packet-dump-error', { listener: this.entry.name, error: err.message }));
      }
      const file = this.dumpFile;
      this.dump = (text) => void file.write(text);
    } else {
      this.dump = (text) => void process.stdout.write(text);
    }
  }
}
