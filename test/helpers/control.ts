// Helpers for the control-port tests: raw sessions (TCP on 127.0.0.1 or a Unix socket) that split the
// stream into replies, one-shot commands, the `lb` CLI and external clients (telnet, nc, socat, mrtg) as
// child processes, all registered with backends.ts's `track`, so `useControlScope()` closes what a test opened.
// Every wait is bounded (`within`).

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net, { type Socket } from 'node:net';
import path from 'node:path';
import { afterEach } from 'vitest';
import { connected, track, within } from './backends.ts';
import { scratchDir, type ScratchDir } from './cli.ts';
import { cleanup, ROOT, startLb, type InProcessLb } from './lb.ts';

export const CLI = path.join(ROOT, 'src/cli/main.ts');
export const PROMPT = 'lb> ';
/** `0d 0h00m01s`: days, hours, zero-padded minutes and seconds. */
export const UPTIME = /^\d+d \d{1,2}h\d\dm\d\ds$/;
/** An error reply line: `error: ...` ending with its code in brackets. */
export const ERROR_LINE = /^error: .+ \[LB_[A-Z_]+\]$/;

// ---------------------------------------------------------------------------------------------------
// Registry

/**
 * For a control-port test file: after each test, closes every session, socket, child process, lb and
 * backend the helpers opened and removes the test's scratch directory (made on first use).
 */
export function useControlScope(): { scratch(): ScratchDir } {
  let dir: ScratchDir | null = null;
  afterEach(async () => {
    await cleanup(); // lb instances, then everything registered with `track`
    dir?.remove();
    dir = null;
  });
  return { scratch: () => (dir ??= scratchDir()) };
}

// ---------------------------------------------------------------------------------------------------
// Tokens: a TCP session above read needs `auth TOKEN`

/** The token of the file ADMIN_CONTROL names (written once per test process, mode 0600). */
export const TEST_TOKEN = 'lb-test-token-0123456789abcdef';
let tokenFile: string | null = null;

/** The path of a token file holding TEST_TOKEN. */
export function testTokenFile(): string {
  if (tokenFile === null) {
    const dir = mkdtempSync(path.join(tmpdir(), 'lb-token-'));
    tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, `${TEST_TOKEN}\n`, { mode: 0o600 });
    // One per test file (vitest worker): removed when that worker's process ends.
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  return tokenFile;
}

/** `[control]` keys for a TCP port where a session that sends `auth TEST_TOKEN` is admin. */
export function adminControl(): { listen: string; level: 'admin'; token_file: string } {
  return { listen: '127.0.0.1:0', level: 'admin', token_file: testTokenFile() };
}

/**
 * TCP control ports whose sessions the helpers authenticate first (filled by startControlLb and
 * startCliLb when the config names the test token file). `{ auth: false }` opts a session out.
 */
const tokenPorts = new Set<number>();

function wantsAuth(addr: ControlAddr, auth: boolean | undefined): boolean {
  return auth ?? (typeof addr === 'number' && tokenPorts.has(addr));
}

// ---------------------------------------------------------------------------------------------------
// Sessions

/** A TCP port on 127.0.0.1, or the path of a Unix socket. */
export type ControlAddr = number | string;

/** Removes Telnet commands (IAC x, IAC DO/DONT/WILL/WONT opt, IAC SB ... IAC SE) and un-doubles IAC IAC. */
export function stripTelnet(data: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < data.length; i++) {
    const b = data[i]!;
    if (b !== 0xff) {
      out.push(b);
      continue;
    }
    const cmd = data[i + 1];
    if (cmd === undefined) break;
    if (cmd === 0xff) out.push(0xff);
    else if (cmd >= 0xfb && cmd <= 0xfe) i++;
    else if (cmd === 0xfa) {
      const se = data.indexOf(Buffer.from([0xff, 0xf0]), i + 2);
      i = se < 0 ? data.length : se;
    }
    i++;
  }
  return Buffer.from(out);
}

/**
 * Splits what a session received into complete replies: each reply ends with a blank line (CR LF or LF);
 * a prompt (`lb> `) in front of a reply is removed. The part after the last blank line is left out.
 */
export function splitReplies(received: Buffer): string[] {
  const text = stripTelnet(received).toString('latin1').replace(/\r\n/g, '\n');
  const pieces = text.split('\n\n');
  pieces.pop();
  return pieces.map((p) => {
    let s = p;
    while (s.startsWith(PROMPT)) s = s.slice(PROMPT.length);
    return s;
  });
}

export interface ControlSession {
  readonly socket: Socket;
  /** Every byte received so far. */
  raw(): Buffer;
  /** The complete replies received so far (prompts and Telnet commands removed). */
  replies(): string[];
  write(data: string | Buffer): void;
  /** Sends `line` and its end of line, waits for the next complete reply and returns its text. */
  command(line: string, ms?: number): Promise<string>;
  /** Resolves once `n` complete replies have arrived in all. */
  waitReplies(n: number, ms?: number): Promise<string[]>;
  /** Resolves once the raw bytes satisfy `cond`. */
  waitRaw(cond: (b: Buffer) => boolean, ms?: number, what?: string): Promise<Buffer>;
  /** Resolves when the server's FIN arrives. */
  readonly ended: Promise<void>;
  /** Resolves when the socket is closed. */
  readonly closed: Promise<void>;
  /** Resolves when lb has closed the session, by FIN (ended) or otherwise (closed). */
  readonly gone: Promise<void>;
  close(): Promise<void>;
}

/**
 * Opens a session. `eol` is what `command()` ends lines with: `'\r\n'` makes lb treat the client as a
 * Telnet client (prompt on), `'\n'` as a script. The socket is half-open capable: the server's FIN does
 * not close our side, so tests can see what lb does with a client that keeps its side open.
 */
export async function openSession(addr: ControlAddr, opts: { eol?: string; ms?: number; auth?: boolean } = {}): Promise<ControlSession> {
  const eol = opts.eol ?? '\n';
  /** Bytes before this offset (the `auth` reply) are not shown to the test. */
  let skip = 0;
  const socket =
    typeof addr === 'number' ? net.connect({ port: addr, host: '127.0.0.1', allowHalfOpen: true }) : net.connect({ path: addr, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  let total = Buffer.alloc(0);
  const waiters = new Set<() => void>();
  const all = (): Buffer => {
    if (chunks.length > 0) {
      total = Buffer.concat([total, ...chunks]);
      chunks.length = 0;
    }
    return total;
  };
  const raw = (): Buffer => all().subarray(skip);
  socket.on('data', (c: Buffer) => {
    chunks.push(c);
    for (const w of [...waiters]) w();
  });
  socket.on('error', () => undefined);
  const ended = new Promise<void>((resolve) => socket.once('end', () => resolve()));
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      resolve();
      for (const w of [...waiters]) w();
    }),
  );
  const waitRaw = (cond: (b: Buffer) => boolean, ms = 3000, what = 'data'): Promise<Buffer> => {
    let check = (): void => undefined;
    const got = new Promise<Buffer>((resolve, reject) => {
      check = (): void => {
        const r = raw();
        if (cond(r)) resolve(r);
        else if (socket.destroyed) reject(new Error(`control session closed before ${what}; got ${JSON.stringify(r.toString('latin1').slice(-400))}`));
      };
      waiters.add(check);
      check();
    });
    return within(got, ms, `${what}; got so far ${JSON.stringify(raw().toString('latin1').slice(-400))}`).finally(() => waiters.delete(check));
  };
  const session: ControlSession = track({
    socket,
    raw,
    replies: () => splitReplies(raw()),
    write: (data: string | Buffer) => void socket.write(data),
    async command(line: string, ms = 3000) {
      const before = splitReplies(raw()).length;
      socket.write(`${line}${eol}`);
      await waitRaw((b) => splitReplies(b).length > before, ms, `the reply to ${JSON.stringify(line)}`);
      return splitReplies(raw())[before]!;
    },
    async waitReplies(n: number, ms = 3000) {
      await waitRaw((b) => splitReplies(b).length >= n, ms, `${n} replies`);
      return splitReplies(raw());
    },
    waitRaw,
    ended,
    closed,
    gone: Promise.race([ended, closed]),
    close: async () => {
      if (!socket.destroyed) socket.destroy();
      await within(closed, 3000, 'a control session to close');
    },
  });
  await connected(socket, opts.ms ?? 3000, `a control connection to ${addr}`);
  if (wantsAuth(addr, opts.auth)) {
    const reply = await session.command(`auth ${TEST_TOKEN}`);
    if (!/^level \w+$/.test(reply)) throw new Error(`auth failed on ${addr}: ${reply}`);
    const text = all().toString('latin1');
    skip = text.indexOf(eol === '\n' ? '\n\n' : '\r\n\r\n') + (eol === '\n' ? 2 : 4);
  }
  return session;
}

/**
 * Sends `input` as a script would (`printf ... | nc -N`): writes it, half-closes, and returns everything
 * received until the server closes, as latin1 text (one character per byte).
 */
export async function oneShot(addr: ControlAddr, input: string | Buffer, ms = 5000, opts: { auth?: boolean } = {}): Promise<string> {
  const s = await openSession(addr, opts);
  s.socket.end(input);
  await within(s.gone, ms, `lb to answer and close after ${JSON.stringify(String(input).slice(0, 60))}`);
  const text = s.raw().toString('latin1');
  await s.close();
  return text;
}

/** One command over a fresh session; returns the reply without its closing blank line. */
export async function ctl(addr: ControlAddr, command: string, ms = 5000, opts: { auth?: boolean } = {}): Promise<string> {
  const text = await oneShot(addr, `${command}\n`, ms, opts);
  if (!text.endsWith('\n\n')) throw new Error(`reply to ${JSON.stringify(command)} does not end with a blank line: ${JSON.stringify(text)}`);
  return text.slice(0, -2);
}

// ---------------------------------------------------------------------------------------------------
// `show` parsing

export interface ShowRow {
  grp: number;
  type: string;
  ch: number;
  state: string;
  ip: string;
  port: number;
  c: number;
  totalc: number;
  maxc: number;
  sent: number;
  rcvd: number;
  fail: number;
}

export const SHOW_HEADER_BALANCE = 'GRP Type  #   S       ip-address  port    c      totalc maxc        sent        rcvd';

/** The rows of `show` per listener name (a block starts with `listener NAME ADDRESS ...`). */
export function parseShow(text: string): Map<string, ShowRow[]> {
  const out = new Map<string, ShowRow[]>();
  let current: ShowRow[] | null = null;
  for (const line of text.split('\n')) {
    const head = /^listener (\S+) /.exec(line);
    if (head) {
      current = [];
      out.set(head[1]!, current);
      continue;
    }
    if (current === null || !/^ *\d+ +\S+ +\d+ +(ENA|dis|DIS) /.test(line)) continue;
    const f = line.trim().split(/\s+/);
    current.push({
      grp: Number(f[0]), type: f[1]!, ch: Number(f[2]), state: f[3]!, ip: f[4]!, port: Number(f[5]), c: Number(f[6]),
      totalc: Number(f[7]), maxc: Number(f[8]), sent: Number(f[9]), rcvd: Number(f[10]), fail: Number(f[11]),
    });
  }
  return out;
}

/** The row of listener `l`, group `g`, channel `c` in a `show` reply. */
export function showRow(text: string, l: string, g: number, c: number): ShowRow {
  const row = parseShow(text).get(l)?.find((r) => r.grp === g && r.ch === c);
  if (!row) throw new Error(`no row ${l} ${g} ${c} in:\n${text}`);
  return row;
}

// ---------------------------------------------------------------------------------------------------
// An in-process lb with a control port

export interface ControlLb {
  lb: InProcessLb;
  /** The bound TCP control port. */
  port: number;
}

/** Starts an in-process lb from `doc` (which must have a `[control]` section) and reads back its port. */
export async function startControlLb(doc: Record<string, unknown>): Promise<ControlLb> {
  const lb = await startLb(doc);
  const port = lb.rt.control?.port() ?? 0;
  const control = (doc as { control?: { token_file?: string } }).control;
  if (port && control?.token_file === tokenFile && tokenFile !== null) tokenPorts.add(port);
  return { lb, port };
}

// ---------------------------------------------------------------------------------------------------
// Child processes

export interface ProcResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface Proc {
  readonly proc: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves when stdout (or stderr, with `stream`) satisfies `cond`. */
  waitOutput(cond: (text: string) => boolean, ms?: number, what?: string, stream?: 'stdout' | 'stderr'): Promise<string>;
  readonly exited: Promise<ProcResult>;
  /** Waits for the exit (bounded); kills it with SIGKILL first if `kill`. */
  close(): Promise<void>;
}

/** Spawns `cmd args` (tracked: killed after the test). `input` is written to stdin and stdin closed. */
export function run(
  cmd: string,
  args: readonly string[],
  opts: { input?: string | Buffer; keepStdin?: boolean; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Proc {
  const proc = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  proc.stdout!.on('data', (d: Buffer) => {
    out += d.toString('latin1');
    for (const w of [...waiters]) w();
  });
  proc.stderr!.on('data', (d: Buffer) => {
    err += d.toString('latin1');
    for (const w of [...waiters]) w();
  });
  proc.stdin!.on('error', () => undefined);
  const exited = new Promise<ProcResult>((resolve) => {
    proc.once('error', (e) => {
      err += String(e);
      resolve({ code: null, signal: null, stdout: out, stderr: err });
    });
    proc.once('close', (code, signal) => {
      resolve({ code, signal, stdout: out, stderr: err });
      for (const w of [...waiters]) w();
    });
  });
  if (opts.input !== undefined) proc.stdin!.end(opts.input);
  else if (!opts.keepStdin) proc.stdin!.end();
  const p: Proc = track({
    proc,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitOutput(cond, ms = 5000, what = 'output', stream = 'stdout') {
      let check = (): void => undefined;
      const got = new Promise<string>((resolve, reject) => {
        check = (): void => {
          const text = stream === 'stdout' ? out : err;
          if (cond(text)) resolve(text);
          else if (proc.exitCode !== null || proc.signalCode !== null) {
            reject(new Error(`${cmd} exited (${proc.exitCode ?? proc.signalCode}) before ${what}; stdout ${JSON.stringify(out.slice(-500))} stderr ${JSON.stringify(err.slice(-500))}`));
          }
        };
        waiters.add(check);
        check();
      });
      return within(got, ms, `${cmd}: ${what}; stdout ${JSON.stringify(out.slice(-500))} stderr ${JSON.stringify(err.slice(-500))}`).finally(() =>
        waiters.delete(check),
      );
    },
    close: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await within(exited, 5000, `${cmd} to exit`);
    },
  });
  return p;
}

/** Runs `cmd args` to completion (bounded: SIGKILL after `ms`) and returns its exit and output. */
export async function runToEnd(
  cmd: string,
  args: readonly string[],
  opts: { input?: string | Buffer; env?: NodeJS.ProcessEnv; cwd?: string; ms?: number } = {},
): Promise<ProcResult> {
  const p = run(cmd, args, opts);
  try {
    return await within(p.exited, opts.ms ?? 10_000, `${cmd} ${args.join(' ')} to finish; stdout ${JSON.stringify(p.stdout().slice(-300))}`);
  } finally {
    await p.close();
  }
}

/** `lb ARGS` as a process (node src/cli/main.ts), to completion. */
export function lbCli(args: readonly string[], opts: { input?: string; env?: NodeJS.ProcessEnv; ms?: number } = {}): Promise<ProcResult> {
  return runToEnd(process.execPath, [CLI, ...args], opts);
}

export interface CliLb extends Proc {
  /** Listener name → port, from the start-up line. */
  ports: Record<string, number>;
  /** The TCP control port from the start-up line (0 when there is none). */
  controlPort: number;
  /** The control socket path from the start-up line ('' when there is none). */
  controlSocket: string;
}

const STARTED = /^lb \S+ listening on (.*?)(?:; \d+ workers?)?(?:; control (.*))? \(pid \d+\)$/m;

/** Starts `lb ARGS` as a long-running process and resolves once its start-up line is printed. */
export async function startCliLb(args: readonly string[], opts: { env?: NodeJS.ProcessEnv; ms?: number } = {}): Promise<CliLb> {
  const p = run(process.execPath, [CLI, ...args], { env: opts.env });
  const text = await p.waitOutput((t) => STARTED.test(t), opts.ms ?? 10_000, 'the start-up line', 'stderr');
  const m = STARTED.exec(text)!;
  const ports: Record<string, number> = {};
  for (const b of m[1]!.split(' ')) {
    const bm = /^(.+?)=(.*):(\d+)$/.exec(b);
    if (bm) ports[bm[1]!] = Number(bm[3]);
  }
  let controlPort = 0;
  let controlSocket = '';
  const config = args.find((a) => a.endsWith('.toml'));
  const usesTestToken = tokenFile !== null && config !== undefined && readFileSync(config, 'utf8').includes(JSON.stringify(tokenFile));
  for (const c of (m[2] ?? '').split(' ').filter(Boolean)) {
    const cm = /:(\d+)$/.exec(c);
    if (cm && !c.startsWith('/')) controlPort = Number(cm[1]);
    else controlSocket = c;
  }
  if (usesTestToken && controlPort) tokenPorts.add(controlPort);
  return Object.assign(p, { ports, controlPort, controlSocket });
}

// ---------------------------------------------------------------------------------------------------
// External clients

const toolCache = new Map<string, boolean>();

export function hasTool(name: string): boolean {
  let found = toolCache.get(name);
  if (found === undefined) {
    found = spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
    toolCache.set(name, found);
  }
  return found;
}

/**
 * For tests that need an external client: in CI (process.env.CI set) a missing tool fails the test;
 * locally the test is skipped with the reason.
 */
export function needTool(ctx: { skip: (note?: string) => never }, name: string, pkg = name): void {
  if (hasTool(name)) return;
  if (process.env.CI) throw new Error(`"${name}" is not installed, but CI must have it (apt-get install ${pkg})`);
  ctx.skip(`"${name}" is not installed (apt-get install ${pkg})`);
}

// ---------------------------------------------------------------------------------------------------
// A recording TCP proxy, to see the bytes a real client (telnet) and lb exchange

export interface RecordingProxy {
  readonly port: number;
  /** Bytes client → lb so far. */
  fromClient(): Buffer;
  /** Bytes lb → client so far. */
  fromServer(): Buffer;
  waitFromServer(cond: (b: Buffer) => boolean, ms?: number, what?: string): Promise<Buffer>;
  waitFromClient(cond: (b: Buffer) => boolean, ms?: number, what?: string): Promise<Buffer>;
  close(): Promise<void>;
}

/** Listens on 127.0.0.1:0 and relays one connection at a time to 127.0.0.1:`target`, recording both ways. */
export async function recordingProxy(target: number): Promise<RecordingProxy> {
  let c2s = Buffer.alloc(0);
  let s2c = Buffer.alloc(0);
  const waiters = new Set<() => void>();
  const sockets = new Set<Socket>();
  const notify = (): void => {
    for (const w of [...waiters]) w();
  };
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const upstream = net.connect({ port: target, host: '127.0.0.1', allowHalfOpen: true });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.on('data', (d: Buffer) => {
      c2s = Buffer.concat([c2s, d]);
      upstream.write(d);
      notify();
    });
    upstream.on('data', (d: Buffer) => {
      s2c = Buffer.concat([s2c, d]);
      client.write(d);
      notify();
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await within(
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    }),
    3000,
    'the recording proxy to listen',
  );
  const wait = (get: () => Buffer, cond: (b: Buffer) => boolean, ms: number, what: string): Promise<Buffer> => {
    let check = (): void => undefined;
    const got = new Promise<Buffer>((resolve) => {
      check = (): void => {
        if (cond(get())) resolve(get());
      };
      waiters.add(check);
      check();
    });
    return within(got, ms, `${what}; so far ${JSON.stringify(get().toString('latin1').slice(-300))}`).finally(() => waiters.delete(check));
  };
  return track<RecordingProxy>({
    port: (server.address() as net.AddressInfo).port,
    fromClient: () => c2s,
    fromServer: () => s2c,
    waitFromServer: (cond: (b: Buffer) => boolean, ms = 3000, what = 'bytes from lb') => wait(() => s2c, cond, ms, what),
    waitFromClient: (cond: (b: Buffer) => boolean, ms = 3000, what = 'bytes from the client') => wait(() => c2s, cond, ms, what),
    close: async () => {
      for (const s of sockets) s.destroy();
      await within(new Promise<void>((resolve) => server.close(() => resolve())), 3000, 'the recording proxy to close');
    },
  });
}

/** A deterministic pseudo-random buffer (xorshift32), so a failure can be reproduced byte for byte. */
export function pseudoRandomBytes(length: number, seed = 0x2545f491): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/**
 * A config file's text: `[control]` (listen 127.0.0.1:0 unless given) plus one listener "web" on
 * 127.0.0.1:0, round robin over the given backend ports.
 */
export function webToml(control: Record<string, unknown>, backendPorts: readonly number[]): string {
  const lines = Object.entries({ listen: '127.0.0.1:0', ...control }).map(([k, v]) => `${k} = ${JSON.stringify(v)}`);
  return [
    '[control]',
    ...lines,
    '',
    '[listeners.web]',
    'listen = "127.0.0.1:0"',
    '[[listeners.web.groups]]',
    'policy = "rr"',
    `backends = ${JSON.stringify(backendPorts.map((p) => `127.0.0.1:${p}`))}`,
    '',
  ].join('\n');
}

/** Fails (with its stderr) if a CLI lb has exited: a crash must not pass for "connection refused". */
export function expectAlive(p: CliLb): void {
  if (p.proc.exitCode !== null || p.proc.signalCode !== null) {
    throw new Error(`lb exited (${p.proc.exitCode ?? p.proc.signalCode}); its stderr:\n${p.stderr()}`);
  }
}
