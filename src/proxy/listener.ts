// A listening socket for one configured listener, in one data-plane worker: accepts clients and hands
// each to a Relay (a net.Server's socket) or, where the addon accepts, to a NativeFlow. Every worker
// binds the same address with SO_REUSEPORT, so the kernel spreads new connections over the workers;
// what must be global (slots, the queue order, health) is in the shared state, so it does not matter
// which worker a client lands on.

import { createWriteStream, type WriteStream } from 'node:fs';
import net, { type Server, type Socket } from 'node:net';
import { chooseBackend, type Choice } from '../balance/select.ts';
import { FlowList, ListenerState, type Waiter } from '../balance/state.ts';
import type { ListenerEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code, Exit, LbError } from '../errors.ts';
import type { CheckResult } from '../health/state.ts';
import type { Logger } from '../log.ts';
import type { ListenerSlots } from '../shared/slots.ts';
import { NO_TICKET, type SharedState } from '../shared/state.ts';
import { listenAddresses } from './listen-address.ts';
import type { Flow } from './flow.ts';
import { NativeFlow } from './native-flow.ts';
import { HEADER_MAX } from './proxy-protocol.ts';
import { Relay, type RelayHost } from './relay.ts';
import { spliceListen, type AcceptedConn, type AcceptSink, type NativeListening } from './splice.ts';

/** How often a worker with queued clients looks again even without a wake-up (an ejection that ran out). */
const QUEUE_RECHECK_MS = 250;

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

/** What a listener needs from the worker that runs it. */
export interface ListenerContext {
  readonly shared: SharedState;
  readonly region: number;
  readonly log: Logger;
  nextId(): number;
  /** A data-path connect result for a backend with checks: recorded in the shared health state. */
  trafficCheck(listener: ListenerEntry, choice: Choice, result: CheckResult): void;
  localError(code: string): void;
  /** The splice(2) relay is on for this worker (`[global] splice` and the addon). */
  readonly splice: boolean;
  /** A client Node accepted takes a place under `[global] maxconn` (the addon's take theirs in C). */
  admitClient(listener: ListenerEntry): boolean;
  clientReleased(): void;
}

/** A listening socket: Node's (a net.Server) or the addon's. */
export interface Acceptor {
  /** The addon accepts (NativeFlow) rather than Node (Relay). */
  readonly native: boolean;
  /** The addon was asked to (it may have declined the address: then Node accepts). */
  readonly asked: boolean;
  /** The addon's: peek at its clients' first bytes from their accept on (accept_proxy), or not. */
  peek?(max: number): void;
  address(): { host: string; port: number } | null;
  close(): Promise<void>;
}

function bindError(entry: ListenerEntry, port: number, code: string): LbError {
  const where = formatHostPort(entry.listen.host, port);
  return new LbError(Code.BIND, `listener ${entry.name}: cannot listen on ${where}: ${code}`, code === 'EACCES' ? Exit.NOPERM : Exit.UNAVAILABLE);
}

async function bindNode(entry: ListenerEntry, port: number, reusePort: boolean, onConnection: (s: Socket) => void, log: Logger, asked: boolean): Promise<Acceptor> {
  const server = await bindServer(entry, port, reusePort, onConnection, log);
  return {
    native: false,
    asked,
    address() {
      const a = server.address();
      return a && typeof a === 'object' ? { host: a.address, port: a.port } : null;
    },
    close: () => closeServer(server),
  };
}

/**
 * Binds and listens in the addon, trying the addresses Node's listen() would; null when the addon cannot
 * take this address (an IPv6 scope id): Node listens instead. Rejects with LB_BIND as bindServer does.
 */
async function bindNative(entry: ListenerEntry, port: number, reusePort: boolean, sink: AcceptSink): Promise<Acceptor | null> {
  let addresses: string[];
  try {
    addresses = await listenAddresses(entry.listen.host);
  } catch (err) {
    throw bindError(entry, port, (err as NodeJS.ErrnoException).code ?? (err as Error).message);
  }
  let failure = 'EINVAL';
  for (const address of addresses) {
    const r = spliceListen(address, port, entry.backlog, reusePort, peekMaxOf(entry), sink);
    if (typeof r === 'string') {
      failure = r;
      continue;
    }
    const l: NativeListening = r;
    return {
      native: true,
      asked: true,
      address: () => ({ host: address, port: l.port }),
      peek: (max) => l.peek(max),
      close: () => {
        l.close();
        return Promise.resolve();
      },
    };
  }
  if (failure === 'EINVAL') return null;
  throw bindError(entry, port, failure);
}

/** How much of each client the addon peeks at from its accept on: a PROXY header's worth with accept_proxy. */
function peekMaxOf(entry: ListenerEntry): number {
  return entry.acceptProxy ? HEADER_MAX : 0;
}

/** Binds `host:port` (SO_REUSEPORT where `shared`); rejects with LB_BIND when the address cannot be used. */
export function bindServer(entry: ListenerEntry, port: number, reusePort: boolean, onConnection: (s: Socket) => void, log: Logger): Promise<Server> {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
  server.on('connection', onConnection);
  const { host } = entry.listen;
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => reject(bindError(entry, port, err.code ?? err.message));
    server.once('error', onError);
    server.listen({ host: host ?? undefined, port, backlog: entry.backlog, reusePort }, () => {
      server.removeListener('error', onError);
      inheritSocketOptions(server);
      server.on('error', (err) => log.log('error', 'listener-error', { listener: entry.name, error: err.message }));
      resolve(server);
    });
  });
}

export class ListenerRuntime implements RelayHost, AcceptSink {
  entry: ListenerEntry;
  state: ListenerState;
  readonly ctx: ListenerContext;
  readonly log: Logger;
  accessLog: boolean;
  dump: ((text: string) => void) | null = null;
  splice = false;
  private dumpFile: WriteStream | null = null;
  private server: Acceptor | null = null;
  /** A socket bound for a table not yet committed (a reload's staging). */
  private staged: Acceptor | null = null;
  private onIdle: (() => void) | null = null;

  constructor(entry: ListenerEntry, slots: ListenerSlots, ctx: ListenerContext, accessLog: boolean) {
    this.entry = entry;
    this.ctx = ctx;
    this.log = ctx.log;
    this.accessLog = accessLog;
    this.state = new ListenerState(ctx.shared, slots, ctx.region, null);
    this.setDump();
  }

  nextId(): number {
    return this.ctx.nextId();
  }

  /**
   * Binds a socket for `entry` on `port` without routing by it for this listener yet: the addon's when
   * `native` (and it takes the address), else Node's.
   */
  async stage(entry: ListenerEntry, port: number, reusePort: boolean, native: boolean): Promise<number> {
    await this.unstage();
    this.staged =
      (native ? await bindNative(entry, port, reusePort, this) : null) ?? (await bindNode(entry, port, reusePort, (s) => this.accept(s), this.log, native));
    return this.staged.address()?.port ?? port;
  }

  /** Whether the addon was asked to accept this listener's clients (it may have declined the address). */
  get nativeAsked(): boolean {
    return this.server?.asked ?? false;
  }

  /** Makes the staged socket the listening one (closing the old one, if any). */
  async commitStaged(): Promise<void> {
    if (!this.staged) return;
    const old = this.server;
    this.server = this.staged;
    this.staged = null;
    if (old) await old.close();
  }

  async unstage(): Promise<void> {
    const s = this.staged;
    this.staged = null;
    if (s) await s.close();
  }

  /** The address actually bound (port 0 in the config means "any free port"). */
  address(): { host: string; port: number } | null {
    return this.server?.address() ?? null;
  }

  accept(socket: Socket): void {
    // Node cannot stop accepting at maxconn: the client beyond it is closed at once (and counted).
    if (!this.ctx.admitClient(this.entry)) {
      socket.destroy();
      return;
    }
    new Relay(socket, this.entry, this);
  }

  clientReleased(): void {
    this.ctx.clientReleased();
  }

  /** A client the addon accepted: JS decides its backend, the addon does the rest. */
  accepted(conn: AcceptedConn, address: string, port: number): void {
    new NativeFlow(conn, address, port, this.entry, this);
  }

  paused(errno: string): void {
    this.ctx.localError(errno);
  }

  // --- Connect deadlines ----------------------------------------------------------------------------

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
    for (const relay of this.connecting) if (relay.connectDeadline < next) next = relay.connectDeadline; // failovers just started
    if (next !== Infinity) this.armConnectTimer(next);
  }

  // --- The queue --------------------------------------------------------------------------------------

  private queueTimer: NodeJS.Timeout | null = null;
  private queueTimerAt = Infinity;
  private waking = false;

  /**
   * Waiters that any usable backend would do for take slots strictly in ticket order across workers:
   * only the holder of the oldest such ticket may take one. A waiter pinned to particular backends (a
   * hash without failover, or one that already failed somewhere) is served whenever one of those has a
   * slot, so it never blocks the others, and it may go before older unpinned waiters.
   */
  private pinned(r: Flow): boolean {
    return r.tried !== null || (!this.entry.hashFailover && this.entry.groups.some((g) => g.policy === 'hash'));
  }

  enqueue(flow: Flow): boolean {
    const q = flow.entry.queue!;
    const ticket = this.ctx.shared.enqueue(this.state.slot, q.max, this.ctx.region);
    if (ticket < 0) return false;
    const now = Date.now();
    flow.ticket = ticket;
    flow.queuedAt = now;
    flow.queueDeadline = now + q.timeoutMs;
    this.state.queue.add(flow);
    this.queueChanged();
    // A slot may be free already (its wake-up went to an older waiter that left): look once the client
    // has settled into its queued phase.
    setImmediate(() => this.serveQueue());
    return true;
  }

  requeue(flow: Flow): void {
    this.ctx.shared.requeue(this.state.slot, this.ctx.region);
    this.state.queue.unshift(flow);
    this.queueChanged();
  }

  leaveQueue(flow: Flow): void {
    if (!this.state.queue.delete(flow)) return;
    this.ctx.shared.dequeue(this.state.slot, this.ctx.region);
    this.publishOldest();
  }

  private queueChanged(): void {
    this.publishOldest();
    const first = this.state.queue.first() as Flow | null;
    if (first) this.armQueueTimer(first.queueDeadline);
    this.armWake();
  }

  private publishOldest(): void {
    let ticket = NO_TICKET;
    for (const w of this.state.queue) {
      const r = w as Flow;
      if (!this.pinned(r) && r.ticket < ticket) ticket = r.ticket;
    }
    this.ctx.shared.publishOldest(this.state.slot, this.ctx.region, ticket);
  }

  private armQueueTimer(deadline: number): void {
    if (deadline >= this.queueTimerAt) return;
    if (this.queueTimer !== null) clearTimeout(this.queueTimer);
    this.queueTimerAt = deadline;
    this.queueTimer = setTimeout(() => this.sweepQueue(), Math.max(1, deadline - Date.now()));
  }

  private sweepQueue(): void {
    this.queueTimer = null;
    this.queueTimerAt = Infinity;
    const now = Date.now();
    let next = Infinity;
    for (const w of this.state.queue) {
      const r = w as Flow;
      if (r.queueDeadline <= now) r.queueTimedOut(); // removes it
      else if (r.queueDeadline < next) next = r.queueDeadline;
    }
    if (next !== Infinity) this.armQueueTimer(next);
  }

  /** Waits for a wake-up from any worker (or a short recheck) while this worker has waiters. */
  private armWake(): void {
    if (this.waking || this.state.queue.size === 0) return;
    const shared = this.ctx.shared;
    const slot = this.state.slot;
    const wait = shared.waitWake(slot, shared.wakeValue(slot), QUEUE_RECHECK_MS);
    this.waking = true;
    const then = (): void => {
      this.waking = false;
      this.serveQueue();
      this.armWake();
    };
    if (wait === null) setImmediate(then);
    else void wait.then(then);
  }

  /** A slot was released here: wake every worker's queue for this listener. */
  slotFreed(): void {
    if (this.ctx.shared.queued(this.state.slot) > 0) this.ctx.shared.wake(this.state.slot);
  }

  /** Gives every slot that is free now to the waiters entitled to it, as many as there are slots. */
  serveQueue(): void {
    const queue = this.state.queue;
    if (queue.size === 0) return;
    const shared = this.ctx.shared;
    const slot = this.state.slot;
    const now = Date.now();
    let served = false;
    let unpinnedBlocked = false;
    for (let w = queue.first() as Flow | null; w !== null; ) {
      const next = queue.nextOf(w) as Flow | null;
      const pinned = this.pinned(w);
      if (!pinned && (unpinnedBlocked || w.ticket > shared.oldestTicketOf(slot))) {
        unpinnedBlocked = true; // an older waiter (maybe in another worker) goes first
      } else {
        const choice = chooseBackend(this.entry, this.state, w.clientIp, now, w.tried);
        if (choice !== null) {
          w.serve(choice);
          served = true;
        } else if (!pinned) unpinnedBlocked = true; // nothing free for anyone unpinned
      }
      w = next;
    }
    if (served && shared.queued(slot) > 0) shared.wake(slot); // slots may be left for other workers' waiters
  }

  // --- Relay host -------------------------------------------------------------------------------------

  trafficCheck(_flow: Flow, choice: Choice, result: CheckResult): void {
    this.ctx.trafficCheck(this.entry, choice, result);
  }

  localError(code: string): void {
    this.ctx.localError(code);
  }

  /** A new table: future clients use the new entry; running relays keep the one they started with. */
  update(entry: ListenerEntry, slots: ListenerSlots, accessLog: boolean): void {
    if (peekMaxOf(entry) !== peekMaxOf(this.entry)) this.server?.peek?.(peekMaxOf(entry));
    this.entry = entry;
    this.accessLog = accessLog;
    this.state = new ListenerState(this.ctx.shared, slots, this.ctx.region, this.state);
    this.setDump();
    this.publishOldest();
    if (this.state.queue.size > 0) this.serveQueue();
  }

  /** Stops accepting; open connections go on. */
  async stopAccepting(): Promise<void> {
    const server = this.server;
    this.server = null;
    await this.unstage();
    if (server) await server.close();
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
    for (const flow of [...this.state.live]) (flow as unknown as Flow).abort('shutdown');
  }

  /** Ends every relay now, whatever its sockets report (shutdown's last resort). */
  endAll(): void {
    for (const flow of [...this.state.live]) (flow as unknown as Flow).end();
  }

  relayFinished(_flow: Flow): void {
    if (this.onIdle && this.state.live.size === 0) {
      const done = this.onIdle;
      this.onIdle = null;
      done();
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
    this.splice = this.ctx.splice && packetDump === 'off'; // a dump needs the bytes in JS
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

/**
 * close() shuts the listening socket at once, but its callback waits for every accepted connection to
 * end: waiting for it would hold up drains and reloads until the last client leaves. The port is free
 * once libuv has closed the handle, on the next turn of the loop.
 */
function closeServer(server: Server): Promise<void> {
  server.close();
  return new Promise((resolve) => setImmediate(resolve));
}

export type { Waiter };
