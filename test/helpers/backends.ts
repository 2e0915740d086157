// Small real servers and clients on 127.0.0.1 (port 0 only) for the data-path tests.
//
// Every helper returns `{ port, close() }` and registers itself, so `closeAllBackends()` in an afterEach
// closes whatever a test left open (servers, their accepted sockets, clients, child processes).
// Every wait here is bounded: `within()` rejects with a message naming what was awaited.

import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net, { type AddressInfo, type Server, type Socket } from 'node:net';

export const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------------------------------
// Bounded waits

/** Resolves with `p`, or rejects after `ms` naming `what`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `cond` every `everyMs` until it holds; rejects after `ms`. For state that has no event. */
export async function until(cond: () => boolean, ms: number, what: string, everyMs = 10): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

// ---------------------------------------------------------------------------------------------------
// Registry of everything to close after a test

export interface Closable {
  close(): Promise<void>;
}

const open = new Set<Closable>();

/** Resolves when the socket has connected; rejects on its error or after `ms`. */
export function connected(socket: Socket, ms: number, what: string): Promise<void> {
  return within(
    new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('error', reject);
    }),
    ms,
    what,
  );
}

/** Registers something to close after the test; shared by every helper module. */
export function track<T extends Closable>(c: T): T {
  const close = c.close.bind(c);
  let closing: Promise<void> | null = null;
  c.close = () => {
    open.delete(c);
    return (closing ??= close());
  };
  open.add(c);
  return c;
}

/** Closes every server, client and child process the helpers created (call in afterEach). */
export async function closeAllBackends(): Promise<void> {
  const all = [...open];
  open.clear();
  await Promise.all(all.map((c) => c.close().catch(() => undefined)));
}

// ---------------------------------------------------------------------------------------------------
// Servers

export interface TestServer {
  readonly port: number;
  readonly name: string;
  /** Connections accepted so far. */
  accepted: number;
  /** Sockets currently open on the server side. */
  readonly sockets: Set<Socket>;
  close(): Promise<void>;
}

/** Resolves with the next accepted socket (bounded). */
export function nextConnection(server: TestServer & { server: Server }, ms = 3000): Promise<Socket> {
  return within(once(server.server, 'connection').then(([s]) => s as Socket), ms, `a connection on ${server.name}`);
}

async function listen(name: string, onSocket: (s: Socket) => void): Promise<TestServer & { server: Server }> {
  const sockets = new Set<Socket>();
  const server = net.createServer({ allowHalfOpen: true });
  const ts = {
    port: 0,
    name,
    accepted: 0,
    sockets,
    server,
    close: async (): Promise<void> => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await within(closed, 3000, `server ${name} to close`);
    },
  };
  server.on('connection', (s: Socket) => {
    ts.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined); // resets are part of the tests; the socket closes either way
    onSocket(s);
  });
  server.listen(0, HOST);
  await within(once(server, 'listening'), 3000, `server ${name} to listen`);
  ts.port = (server.address() as AddressInfo).port;
  return track(ts);
}

/**
 * Echo: every chunk is written back, prefixed with `[name] ` when `prefix` is set (as the echo backend in
 * balance.md §10 does). The echo half-closes when the client does.
 */
export function echoServer(name = 'echo', opts: { prefix?: boolean } = {}): Promise<TestServer & { server: Server }> {
  const prefix = opts.prefix ? Buffer.from(`[${name}] `) : null;
  return listen(name, (s) => {
    s.on('data', (chunk: Buffer) => s.write(prefix ? Buffer.concat([prefix, chunk]) : chunk));
    s.on('end', () => s.end());
  });
}

export interface ReceivedStream {
  bytes: number;
  sha256: string;
  data: Buffer;
}

export interface SinkServer extends TestServer {
  server: Server;
  /** One entry per accepted connection: resolves when that client's FIN arrives. */
  readonly received: Promise<ReceivedStream>[];
}

/**
 * Sink and source: counts and hashes what each client sends until its FIN. With `send`, it writes those
 * bytes as soon as the connection is accepted (respecting backpressure) and then ends its side.
 * With `replyAfterEof`, it answers only after the client's FIN: `replyAfterEof(received)` is written and
 * the socket ended — the half-close case (`printf req | nc -N`).
 */
export async function sinkServer(
  name = 'sink',
  opts: { send?: Buffer; replyAfterEof?: (received: Buffer) => Buffer | string; keep?: boolean } = {},
): Promise<SinkServer> {
  const received: Promise<ReceivedStream>[] = [];
  const ts = await listen(name, (s) => {
    const chunks: Buffer[] = [];
    const hash = createHash('sha256');
    let bytes = 0;
    received.push(
      new Promise<ReceivedStream>((resolve, reject) => {
        s.on('data', (c: Buffer) => {
          bytes += c.length;
          hash.update(c);
          if (opts.keep !== false && bytes <= 4 << 20) chunks.push(c);
        });
        s.on('end', () => {
          const data = Buffer.concat(chunks);
          resolve({ bytes, sha256: hash.digest('hex'), data });
          if (opts.replyAfterEof) s.end(opts.replyAfterEof(data));
        });
        s.on('close', () => reject(new Error(`${name}: connection closed before the client's FIN`)));
      }),
    );
    received[received.length - 1]!.catch(() => undefined);
    if (opts.send) s.end(opts.send);
  });
  return Object.assign(ts, { received }) as SinkServer;
}

/** Answers after the client's FIN: reads the whole request, replies `reply(request)`, then closes. */
export function answerAfterEofServer(
  name = 'after-eof',
  reply: (request: Buffer) => Buffer | string = (req) => `got ${req.length} bytes: ${req.toString()}`,
): Promise<SinkServer> {
  return sinkServer(name, { replyAfterEof: reply });
}

/**
 * Reset-er: destroys each connection with a TCP RST (resetAndDestroy), either at once (`'connect'`) or
 * when its first data arrives (`'data'`).
 */
export function resetServer(name = 'reset', when: 'connect' | 'data' = 'data'): Promise<TestServer & { server: Server }> {
  return listen(name, (s) => {
    if (when === 'connect') s.resetAndDestroy();
    else s.once('data', () => s.resetAndDestroy());
  });
}

export interface SlowReaderServer extends TestServer {
  server: Server;
  /** Server-side sockets in accept order (paused until `resumeAll`). */
  readonly conns: Socket[];
  /** Starts reading: resolves each connection's byte count and sha256 at the client's FIN. */
  resumeAll(): Promise<ReceivedStream>[];
}

/** Slow reader: accepts and never reads until told to, so a sender fills the buffers and must stall. */
export async function slowReaderServer(name = 'slow'): Promise<SlowReaderServer> {
  const conns: Socket[] = [];
  const ts = await listen(name, (s) => {
    s.pause();
    conns.push(s);
  });
  const resumeAll = (): Promise<ReceivedStream>[] =>
    conns.map(
      (s) =>
        new Promise<ReceivedStream>((resolve) => {
          const hash = createHash('sha256');
          let bytes = 0;
          s.on('data', (c: Buffer) => {
            bytes += c.length;
            hash.update(c);
          });
          s.on('end', () => {
            resolve({ bytes, sha256: hash.digest('hex'), data: Buffer.alloc(0) });
            s.end();
          });
          s.resume();
        }),
    );
  return Object.assign(ts, { conns, resumeAll }) as SlowReaderServer;
}

/**
 * Fast source: writes `total` bytes of a repeating pseudo-random pattern as fast as the peer takes them
 * (waiting for 'drain'), then ends. `flushed()` is what has left the process (written minus buffered).
 */
export async function fastSourceServer(
  name: string,
  total: number,
): Promise<TestServer & { server: Server; flushed(): number; sha256: string }> {
  const block = randomBytes(64 * 1024);
  const hash = createHash('sha256');
  for (let n = 0; n < total; n += block.length) hash.update(block.subarray(0, Math.min(block.length, total - n)));
  const writers: Socket[] = [];
  const ts = await listen(name, (s) => {
    writers.push(s);
    let sent = 0;
    const pump = (): void => {
      while (sent < total) {
        const piece = block.subarray(0, Math.min(block.length, total - sent));
        sent += piece.length;
        if (!s.write(piece)) {
          s.once('drain', pump);
          return;
        }
      }
      s.end();
    };
    pump();
  });
  const flushed = (): number => writers.reduce((n, s) => n + s.bytesWritten - s.writableLength, 0);
  return Object.assign(ts, { flushed, sha256: hash.digest('hex') });
}

/** A port that refuses connections: a free port nobody listens on (see freePort for the tiny race). */
export function refusedPort(): Promise<number> {
  return freePort();
}

/**
 * A free port number on 127.0.0.1: binds a temporary server to port 0, closes it and returns the number.
 * Another process could take the port between close and use; on a test machine that window is tiny.
 */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, HOST);
  await within(once(server, 'listening'), 3000, 'a temporary server to listen');
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Dead host: a listener whose accept queue is full and which never accepts, so further SYNs are dropped
 * and connects time out (refused would fail fast; this is the blackholed backend of balance.md §5).
 * Node always accepts, so a python3 child does `listen(0)` and never calls accept(); we then fill its
 * queue from here until a connect no longer completes.
 */
export async function deadHost(): Promise<{ port: number; close(): Promise<void> }> {
  const py: ChildProcess = spawn(
    'python3',
    [
      '-c',
      [
        'import socket, sys',
        's = socket.socket(socket.AF_INET, socket.SOCK_STREAM)',
        "s.bind(('127.0.0.1', 0))",
        's.listen(0)',
        'print(s.getsockname()[1], flush=True)',
        'sys.stdin.read()  # never accept; exit when the parent closes our stdin',
      ].join('\n'),
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const fillers: Socket[] = [];
  const dead = track({
    port: 0,
    close: async (): Promise<void> => {
      for (const s of fillers) s.destroy();
      if (py.exitCode === null && py.signalCode === null) {
        const exited = once(py, 'exit');
        py.kill('SIGKILL');
        await within(exited, 3000, 'the dead-host python process to exit');
      }
    },
  });
  let out = '';
  dead.port = await within(
    new Promise<number>((resolve, reject) => {
      py.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /^(\d+)\n/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      py.once('exit', (code) => reject(new Error(`python3 exited (${code}) before printing its port`)));
      py.once('error', reject);
    }),
    5000,
    'the dead-host python process to print its port',
  );
  // Fill the accept queue: keep every connection that completes; stop at the first one that does not.
  for (let i = 0; i < 8; i++) {
    const s = net.connect(dead.port, HOST);
    s.on('error', () => undefined);
    const completed = await new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), 250); // loopback handshakes take microseconds
      s.once('connect', () => {
        clearTimeout(t);
        resolve(true);
      });
    });
    if (!completed) {
      s.destroy();
      return dead;
    }
    fillers.push(s);
  }
  await dead.close();
  throw new Error('deadHost: the accept queue never filled (every connect completed)');
}

// ---------------------------------------------------------------------------------------------------
// Clients

export interface TestClient {
  readonly socket: Socket;
  /** Everything received so far. */
  received(): Buffer;
  text(): string;
  /** Resolves once the received bytes satisfy `cond` (bounded). */
  waitFor(cond: (received: Buffer) => boolean, ms?: number, what?: string): Promise<Buffer>;
  /** Resolves when the peer's FIN arrives. */
  readonly ended: Promise<void>;
  /** Resolves when the socket is closed, with the error that closed it (if any). */
  readonly closed: Promise<{ error: NodeJS.ErrnoException | null }>;
  /** Sends `data` and resolves with what arrives after it once that contains `data` (an echo, prefixed or not). */
  request(data: string, ms?: number): Promise<string>;
  close(): Promise<void>;
}

/**
 * A client with allowHalfOpen (it can go on sending after the peer's FIN) that collects what it reads.
 * Resolves once connected.
 */
export async function connectClient(port: number, opts: { read?: boolean } = {}): Promise<TestClient> {
  const socket = net.connect({ port, host: HOST, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  let total = Buffer.alloc(0);
  let dirty = false;
  const waiters = new Set<() => void>();
  const received = (): Buffer => {
    if (dirty) {
      total = Buffer.concat(chunks);
      chunks.length = 0;
      chunks.push(total);
      dirty = false;
    }
    return total;
  };
  if (opts.read !== false) {
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      dirty = true;
      for (const w of [...waiters]) w();
    });
  }
  let closeError: NodeJS.ErrnoException | null = null;
  socket.on('error', (e: NodeJS.ErrnoException) => {
    closeError = e;
  });
  const ended = new Promise<void>((resolve) => socket.once('end', () => resolve()));
  const closed = new Promise<{ error: NodeJS.ErrnoException | null }>((resolve) =>
    socket.once('close', () => {
      resolve({ error: closeError });
      for (const w of [...waiters]) w();
    }),
  );
  const client: TestClient = track({
    socket,
    received,
    text: () => received().toString(),
    ended,
    closed,
    waitFor(cond, ms = 3000, what = 'data') {
      let check = (): void => undefined;
      const got = new Promise<Buffer>((resolve, reject) => {
        check = (): void => {
          const r = received();
          if (cond(r)) {
            waiters.delete(check);
            resolve(r);
          } else if (socket.destroyed) {
            waiters.delete(check);
            reject(new Error(`client closed before ${what}; got ${JSON.stringify(r.toString().slice(0, 200))}`));
          }
        };
        waiters.add(check);
        check();
      });
      return within(got, ms, what).finally(() => waiters.delete(check));
    },
    async request(data, ms = 3000) {
      const before = received().length;
      socket.write(data);
      const r = await client.waitFor((b) => b.length > before && b.subarray(before).includes(data), ms, `the answer to "${data}"`);
      return r.subarray(before).toString();
    },
    close: async () => {
      if (!socket.destroyed) socket.destroy();
      await within(closed, 3000, 'the client socket to close');
    },
  });
  await connected(socket, 3000, `a client connect to ${port}`);
  return client;
}

/** Connects, sends `data`, waits for the answer (a prefixed echo names the backend), returns it. */
export async function ask(port: number, data: string, ms = 3000): Promise<string> {
  const c = await connectClient(port);
  try {
    return await c.request(data, ms);
  } finally {
    await c.close();
  }
}

/** The `[name]` prefix of an echo answer. */
export function backendOf(answer: string): string {
  const m = /^\[([^\]]+)\] /.exec(answer);
  if (!m) throw new Error(`not a prefixed echo answer: ${JSON.stringify(answer)}`);
  return m[1]!;
}
