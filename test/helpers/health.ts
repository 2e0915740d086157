// Small servers for the health-check, queue and build-farm tests, on 127.0.0.1 only, port 0 unless a test
// must reuse a port (a backend that "comes back" on the port it had). Every server registers itself so
// `closeHealthServers()` in an afterEach closes what a test left open; every wait is bounded.

import { once } from 'node:events';
import net, { type AddressInfo, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { HOST, within } from './backends.ts';

export interface Backend {
  readonly name: string;
  readonly port: number;
  readonly server: Server;
  /** Connections accepted so far. */
  accepted: number;
  /** performance.now() of every accept, in order. */
  readonly acceptTimes: number[];
  /** Server-side sockets still open. */
  readonly sockets: Set<Socket>;
  /** Connections open right now, and the most seen at once. */
  current: number;
  peak: number;
  /** Stops listening and destroys the open sockets. */
  close(): Promise<void>;
}

const open = new Set<Backend>();

/** Closes every server these helpers opened (call in afterEach). */
export async function closeHealthServers(): Promise<void> {
  const all = [...open];
  open.clear();
  await Promise.all(all.map((b) => b.close().catch(() => undefined)));
}

/** Listens on `port` (0 = any free port) and hands each accepted socket to `onSocket`. */
export async function serve(name: string, onSocket: (s: Socket, b: Backend) => void, port = 0): Promise<Backend> {
  const server = net.createServer({ allowHalfOpen: true });
  const sockets = new Set<Socket>();
  let closing: Promise<void> | null = null;
  const b: Backend = {
    name,
    port,
    server,
    accepted: 0,
    acceptTimes: [],
    sockets,
    current: 0,
    peak: 0,
    close() {
      open.delete(b);
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const s of sockets) s.destroy();
        await within(closed, 3000, `server ${name} to close`);
      })();
      return closing;
    },
  };
  server.on('connection', (s: Socket) => {
    b.accepted++;
    b.acceptTimes.push(performance.now());
    b.current++;
    if (b.current > b.peak) b.peak = b.current;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => {
      sockets.delete(s);
      b.current--;
    });
    onSocket(s, b);
  });
  const listening = new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  await within(listening, 3000, `server ${name} to listen on port ${port}`);
  (b as { port: number }).port = (server.address() as AddressInfo).port;
  open.add(b);
  return b;
}

/** Accepts and does nothing (a plain TCP check passes; an `expect` check times out: L7TOUT). */
export function silentServer(name = 'silent', port = 0): Promise<Backend & { received: () => string }> {
  let got = '';
  return serve(
    name,
    (s) => {
      s.on('data', (c: Buffer) => {
        got += c.toString('latin1');
      });
    },
    port,
  ).then((b) => Object.assign(b, { received: () => got }));
}

/**
 * A line server for send/expect checks: answers `reply` to every chunk it receives (or at once on accept
 * with `onConnect`), and closes after answering when `close`. Everything received is kept.
 */
export function replyServer(
  name: string,
  reply: string,
  opts: { onConnect?: boolean; close?: boolean; port?: number } = {},
): Promise<Backend & { received: () => string }> {
  let got = '';
  const answer = (s: Socket): void => {
    if (opts.close) s.end(reply);
    else s.write(reply);
  };
  return serve(
    name,
    (s) => {
      if (opts.onConnect) answer(s);
      s.on('data', (c: Buffer) => {
        got += c.toString('latin1');
        if (!opts.onConnect) answer(s);
      });
      s.on('end', () => s.end());
    },
    opts.port ?? 0,
  ).then((b) => Object.assign(b, { received: () => got }));
}

/** Echo with a `[name] ` prefix on every chunk (like backends.ts's echoServer), optionally on a given port. */
export function namedEcho(name: string, port = 0): Promise<Backend> {
  const prefix = Buffer.from(`[${name}] `);
  return serve(
    name,
    (s) => {
      s.on('data', (c: Buffer) => s.write(Buffer.concat([prefix, c])));
      s.on('end', () => s.end());
    },
    port,
  );
}

/** Fake compile host: accepts, holds the job for `holdMs`, replies with its name and closes. */
/**
 * A fake compile host for the build-farm tests: it reads each job's first line (`compile job N`) and holds
 * the job until the test calls `finish(N)`, which answers with the host's name and closes. The order in
 * which jobs finish is then the test's, never the machine's speed.
 */
export interface CompileHost extends Backend {
  /** Job numbers this host holds right now (read their first line, not yet finished). */
  readonly held: ReadonlySet<number>;
  /** Every job number this host was given, in the order their first lines arrived. */
  readonly jobs: readonly number[];
  /** Answers job `n` with the host's name and closes it; throws if this host does not hold it. */
  finish(n: number): void;
}

export async function compileServer(name: string): Promise<CompileHost> {
  const sockets = new Map<number, Socket>();
  const held = new Set<number>();
  const jobs: number[] = [];
  const b = await serve(name, (s) => {
    let line = '';
    const onData = (c: Buffer): void => {
      line += c.toString('latin1');
      const m = /^compile job (\d+)\n/.exec(line);
      if (!m) return;
      s.off('data', onData);
      s.resume(); // whatever else the job sends is read and dropped
      const n = Number(m[1]);
      sockets.set(n, s);
      held.add(n);
      jobs.push(n);
      s.on('close', () => held.delete(n));
    };
    s.on('data', onData);
  });
  return Object.assign(b, {
    held,
    jobs,
    finish(n: number): void {
      const s = sockets.get(n);
      if (!s || !held.has(n)) throw new Error(`${name} does not hold job ${n} (holds ${[...held].join(', ') || 'none'})`);
      held.delete(n);
      s.end(name);
    },
  });
}

/** Resolves with everything a socket received until it closed (bounded). */
export function readAll(socket: Socket, ms: number, what: string): Promise<{ data: string; ms: number; error: string | null }> {
  const t0 = performance.now();
  let data = '';
  let error: string | null = null;
  socket.on('data', (c: Buffer) => {
    data += c.toString('latin1');
  });
  socket.on('error', (e: NodeJS.ErrnoException) => {
    error = e.code ?? e.message;
  });
  return within(
    once(socket, 'close').then(() => ({ data, ms: performance.now() - t0, error })),
    ms,
    what,
  );
}

/** A plain client socket to 127.0.0.1:port, connected (bounded); errors are kept, not thrown. */
export async function rawConnect(port: number): Promise<Socket> {
  const s = net.connect({ host: HOST, port, allowHalfOpen: true });
  s.on('error', () => undefined);
  await within(once(s, 'connect'), 3000, `a connect to ${port}`);
  return s;
}

/** The rows of a `show stat` CSV as objects keyed by column name. */
export function parseStatCsv(csv: string): Record<string, string>[] {
  const [head, ...lines] = csv.trim().split('\n');
  if (!head?.startsWith('# ')) throw new Error(`not a show stat CSV:\n${csv}`);
  const cols = head.slice(2).split(',');
  return lines.map((line) => {
    const f = line.split(','); // lb's values here contain no commas or quotes
    return Object.fromEntries(cols.map((c, i) => [c, f[i] ?? '']));
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface ShowLine {
  grp: number;
  ch: number;
  state: string;
  port: number;
  c: number;
  totalc: number;
  maxc: number;
  check: string;
}

/** The backend rows of a balance-style `show` reply (every state: ENA, dis, DIS, DRN). */
export function showLines(text: string): ShowLine[] {
  const rows: ShowLine[] = [];
  for (const line of text.split('\n')) {
    if (!/^ *\d+ +\S+ +\d+ +(ENA|dis|DIS|DRN) /.test(line)) continue;
    const f = line.trim().split(/\s+/);
    rows.push({
      grp: Number(f[0]), ch: Number(f[2]), state: f[3]!, port: Number(f[5]), c: Number(f[6]), totalc: Number(f[7]),
      maxc: Number(f[8]), check: f[12] ?? '',
    });
  }
  return rows;
}

/** The row of group `g`, channel `c` of a `show` reply. */
export function showLine(text: string, g: number, c: number): ShowLine {
  const row = showLines(text).find((r) => r.grp === g && r.ch === c);
  if (!row) throw new Error(`no row ${g}/${c} in:\n${text}`);
  return row;
}
