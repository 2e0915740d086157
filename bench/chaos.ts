// `node bench/chaos.ts [--quick]`: a bounded chaos/soak run of a real lb process, for the figures issue 11
// asks to hold (bytes corrupted, fds leaked, connections failed during reloads, RSS against slow peers,
// concurrent connections at the fd limit).
//
// lb runs as `src/cli/main.ts run FILE` with its default workers and splice setting, on 127.0.0.1, in its
// own process group; its backends are a helper process (lib/chaos-peers.ts) and the clients are this
// process. Five phases, each bounded in count and time (run in the order slow peers, integrity, fds,
// reloads, conns, so that the RSS growth is measured from a fresh lb):
//
//   1. integrity  mixed-size streams both ways, regenerated and compared byte by byte at the receiver,
//                 sha256 compared across the ends (the backend's trailer)
//   2. fds        N mixed connections (normal, client reset, half-close then reset, backend reset, idle
//                 timeout, refused backend); lb's /proc/PID/fd before and after (worker threads share the
//                 process's fd table), and `show` must say current 0
//   3. reloads    M SIGHUPs, cycling through configs that add/remove backends, groups and a listener,
//                 while a load loop makes short connections to a listener every config keeps
//   4. slow peers 12 clients that read slowly from fast backends, 12 backends that read slowly from fast
//                 clients; lb's RSS growth
//   5. conns      as many concurrent connections as the fd limit allows; lb must still answer `show` and
//                 serve a new connection once a few are released
//
// Prints a markdown table; exits 1 if a hard criterion fails (bytes corrupted or lost, an fd leaked, a
// connection failed during the reloads, lb died), 2 on a usage error.

import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net, { type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  downloadSeed,
  StreamCheck,
  StreamGen,
  TRAILER_BYTES,
  uploadSeed,
  writeStream,
  type PeerStats,
} from './lib/chaos-peers.ts';
import { Helper } from './lib/ipc.ts';
import { freePort, nofileLimits, rssKb, withRaisedNofile } from './lib/procfs.ts';
import { lbVersion, REPO, RunningProxy } from './lib/proxies.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const HOST = '127.0.0.1';
const MiB = 1 << 20;

const HELP = `usage: node bench/chaos.ts [options]

  --quick              10,000 connections in the fd phase, 20 reloads, 10 s of slow peers
  (default)            100,000 connections, 100 reloads, 30 s of slow peers
  --phases LIST        comma-separated, from integrity,fds,reloads,slow,conns (default: all)
  --integrity-mib N    MiB relayed in the integrity phase, both directions together (1024)
  --fd-conns N         connections of the fd phase
  --reloads N          SIGHUPs of the reload phase
  --slow-seconds S     length of the slow-peer phase
  --conns-max N        hold at most N connections in the conns phase (default: as many as the fd limit allows)
  --splice auto|off    lb's [global] splice (default: lb's default, auto); off = the JavaScript relay
  --lb PATH            run another checkout's lb (PATH = its src/cli/main.ts; default: this tree's)
  --keep-tmp           keep the run directory (config, lb's log)
  -h, --help
`;

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    phases: { type: 'string' },
    'integrity-mib': { type: 'string' },
    'fd-conns': { type: 'string' },
    reloads: { type: 'string' },
    'slow-seconds': { type: 'string' },
    'conns-max': { type: 'string' },
    splice: { type: 'string' },
    lb: { type: 'string' },
    'keep-tmp': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
  strict: true,
});
if (opt.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

function usage(msg: string): never {
  process.stderr.write(`chaos: ${msg}\n${HELP}`);
  process.exit(2);
}

function count(name: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) usage(`--${name} wants a positive number, got ${v}`);
  return n;
}

const PHASES = ['integrity', 'fds', 'reloads', 'slow', 'conns'] as const;
type Phase = (typeof PHASES)[number];
const phases = new Set<Phase>(
  (opt.phases ?? PHASES.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => ((PHASES as readonly string[]).includes(s) ? (s as Phase) : usage(`unknown phase ${s}`))),
);
if (opt.splice !== undefined && opt.splice !== 'auto' && opt.splice !== 'off') usage('--splice wants auto or off');
const LB_MAIN = path.resolve(opt.lb ?? path.join(REPO, 'src/cli/main.ts'));
if (!fs.existsSync(LB_MAIN)) usage(`--lb: ${LB_MAIN} not found`);
/** The checkout lb runs from (for its commit in the report). */
const LB_ROOT = path.resolve(path.dirname(LB_MAIN), '../..');

const quick = opt.quick === true;
const P = {
  integrityBytes: Math.round(count('integrity-mib', opt['integrity-mib'], 1024) * MiB),
  integrityConcurrency: 24,
  integrityMs: quick ? 180_000 : 300_000,
  fdConns: Math.round(count('fd-conns', opt['fd-conns'], quick ? 10_000 : 100_000)),
  fdConcurrency: 64,
  fdIdleConcurrency: 200,
  fdMs: quick ? 180_000 : 480_000,
  reloads: Math.round(count('reloads', opt.reloads, quick ? 20 : 100)),
  reloadConcurrency: 16,
  reloadMs: quick ? 120_000 : 420_000,
  slowMs: Math.round(1000 * count('slow-seconds', opt['slow-seconds'], quick ? 10 : 30)),
  slowPeers: 12,
  connsMs: 180_000,
  connsMax: Math.round(count('conns-max', opt['conns-max'], Number.MAX_SAFE_INTEGER)),
};
const IDLE_TIMEOUT_MS = 300;
const DRAIN_TIMEOUT_MS = 2000;

// ------------------------------------------------------------------------------------------- report

type Verdict = 'ok' | 'FAIL' | 'warn' | 'skipped';
interface Row {
  phase: string;
  criterion: string;
  result: string;
  verdict: Verdict;
  /** A failure here fails the run (exit 1). */
  hard: boolean;
}
const rows: Row[] = [];
const notes: string[] = [];

function row(phase: string, criterion: string, result: string, verdict: Verdict, hard = false): void {
  rows.push({ phase, criterion, result, verdict, hard });
  process.stderr.write(`chaos: ${phase}: ${criterion}: ${result} [${verdict}]\n`);
}

const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
const mib = (b: number): string => (b / MiB).toLocaleString('en-US', { maximumFractionDigits: 1 });
const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

function tally(into: Record<string, number>, k: string, n = 1): void {
  into[k] = (into[k] ?? 0) + n;
}
const tallyText = (t: Record<string, number>): string =>
  Object.entries(t)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${fmt(v)}`)
    .join(', ') || 'none';

// ------------------------------------------------------------------------------------------ lb side

interface Ports {
  main: number;
  idle: number;
  refused: number;
  extra: number;
  control: number;
  backends: number[];
  dead: number;
}

/** The configs the run cycles through: `main`, `idle` and `refused` keep their addresses in every one. */
function lbConfig(p: Ports, variant: number): string {
  const b = (i: number): string => `"127.0.0.1:${p.backends[i]}"`;
  const g = [
    '# Generated by bench/chaos.ts',
    '[global]',
    `drain_timeout = "${DRAIN_TIMEOUT_MS}ms"`,
    ...(opt.splice ? [`splice = "${opt.splice}"`] : []),
    '',
    '[control]',
    `listen = "127.0.0.1:${p.control}"`,
    '',
    '[listeners.main]',
    `listen = "127.0.0.1:${p.main}"`,
    'connect_timeout = "2s"',
  ];
  const idleAndRefused = [
    '',
    '[listeners.idle]',
    `listen = "127.0.0.1:${p.idle}"`,
    `idle_timeout = "${IDLE_TIMEOUT_MS}ms"`,
    '[[listeners.idle.groups]]',
    `backends = [${b(0)}]`,
    '',
    '[listeners.refused]',
    `listen = "127.0.0.1:${p.refused}"`,
    'connect_timeout = "1s"',
    '[[listeners.refused.groups]]',
    `backends = ["127.0.0.1:${p.dead}"]`,
  ];
  switch (variant % 3) {
    case 0:
      return [...g, '[[listeners.main.groups]]', `backends = [${b(0)}, ${b(1)}, ${b(2)}]`, ...idleAndRefused, ''].join('\n');
    case 1:
      return [
        ...g,
        '[[listeners.main.groups]]',
        'policy = "leastconn"',
        `backends = [{ host = "127.0.0.1", port = ${p.backends[0]}, weight = 2 }, ${b(1)}, ${b(3)}]`,
        ...idleAndRefused,
        '',
        '[listeners.extra]',
        `listen = "127.0.0.1:${p.extra}"`,
        '[[listeners.extra.groups]]',
        `backends = [${b(0)}]`,
        '',
      ].join('\n');
    default:
      return [
        ...g,
        'idle_timeout = "30s"',
        '[[listeners.main.groups]]',
        'policy = "random"',
        `backends = [${b(2)}, ${b(3)}]`,
        '[[listeners.main.groups]]',
        `backends = [${b(0)}]`,
        ...idleAndRefused,
        '',
      ].join('\n');
  }
}

/** lb's stderr, read incrementally: event counts by "level event" and the first few lines of each warning. */
class LogWatch {
  private offset = 0;
  private partial = '';
  readonly events: Record<string, number> = {};
  readonly samples = new Map<string, string>();
  readonly other: string[] = [];
  private readonly file: string;

  constructor(file: string) {
    this.file = file;
  }

  poll(): void {
    let fd: number;
    try {
      fd = fs.openSync(this.file, 'r');
    } catch {
      return;
    }
    try {
      const buf = Buffer.alloc(1 << 20);
      for (let i = 0; i < 1000; i++) {
        const n = fs.readSync(fd, buf, 0, buf.length, this.offset);
        if (n <= 0) break;
        this.offset += n;
        const text = this.partial + buf.subarray(0, n).toString('utf8');
        const lines = text.split('\n');
        this.partial = lines.pop() ?? '';
        for (const line of lines) this.line(line);
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  private line(line: string): void {
    if (!line) return;
    const m = /^\d{4}-\d\d-\d\dT\S+ (debug|info|warn|error) (\S+)/.exec(line);
    if (m) {
      const k = `${m[1]} ${m[2]}`;
      this.events[k] = (this.events[k] ?? 0) + 1;
      if ((m[1] === 'warn' || m[1] === 'error') && !this.samples.has(k)) this.samples.set(k, line.slice(0, 400));
    } else if (!/^lb \S+ (listening on|stopped)/.test(line) && this.other.length < 10) this.other.push(line.slice(0, 400));
  }

  count(event: string): number {
    this.poll();
    let n = 0;
    for (const [k, v] of Object.entries(this.events)) if (k.endsWith(` ${event}`)) n += v;
    return n;
  }
}

/** One control-port command over a fresh session; null if lb did not answer within `ms`. */
function ctl(port: number, command: string, ms = 5000): Promise<string | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const sock = net.connect({ host: HOST, port });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(null);
    }, ms);
    sock.on('connect', () => sock.end(`${command}\n`));
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('latin1');
      resolve(text.endsWith('\n\n') ? text.slice(0, -2) : null);
    });
  });
}

/** `current` of every listener in a `show` reply. */
function currents(show: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of show.matchAll(/^listener (\S+) \S+\s+current (\d+)/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

const sumCurrent = (show: string | null): number | null => (show === null ? null : [...currents(show).values()].reduce((a, b) => a + b, 0));

function infoField(info: string | null, key: string): string | null {
  if (info === null) return null;
  return new RegExp(`^${key}: (.*)$`, 'm').exec(info)?.[1] ?? null;
}

interface FdCensus {
  total: number;
  sockets: number;
  pipes: number;
  other: number;
  /** Targets of the other fds, for the report when they changed. */
  otherKinds: Record<string, number>;
}

/** lb's open fds by kind. Worker threads share the process's fd table, so /proc/PID/fd is all of them. */
function fdCensus(pid: number): FdCensus {
  const c: FdCensus = { total: 0, sockets: 0, pipes: 0, other: 0, otherKinds: {} };
  let names: string[] = [];
  try {
    names = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return c;
  }
  for (const n of names) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${n}`);
    } catch {
      continue; // closed between readdir and readlink
    }
    c.total++;
    if (target.startsWith('socket:')) c.sockets++;
    else if (target.startsWith('pipe:')) c.pipes++;
    else {
      c.other++;
      const kind = target.replace(/\[\d+\]$/, '').replace(/^\/proc\/\d+/, '/proc/N');
      tally(c.otherKinds, kind);
    }
  }
  return c;
}

function threadCount(pid: number): number {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).length;
  } catch {
    return 0;
  }
}

let runDir = '';
let keepDir = false;

/**
 * When lb still holds connections it should not: its sockets as the kernel sees them (`ss`, with their
 * states and queues) and `show`, saved in the run directory for the report. Returns the file's path.
 */
function saveDiagnostics(what: string, pid: number, show: string | null): string {
  const file = path.join(runDir, `diag-${what}.txt`);
  const ss = spawnSync('ss', ['-tanpoeim'], { encoding: 'utf8', maxBuffer: 256 * MiB });
  const lines = (ss.stdout ?? '').split('\n');
  // ss prints a socket's details on the lines after it; keep the sockets of lb's process.
  const mine: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]!.includes(`pid=${pid},`)) mine.push(lines[i]!, ...(lines[i + 1]?.startsWith('\t') ? [lines[i + 1]!] : []));
  }
  fs.writeFileSync(file, `# show\n${show ?? '(no answer)'}\n\n# lb's sockets (ss -tanpoeim)\n${mine.join('\n')}\n`);
  keepDir = true;
  return file;
}

// ------------------------------------------------------------------------------------ client helpers

/** Runs `job` for indices 0..n-1, `concurrency` at a time, starting none after `deadline`; returns how many ran. */
async function pool(n: number, concurrency: number, deadline: number, job: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n && Date.now() < deadline) await job(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return next;
}

/** Every client socket this process opened and has not seen closed: destroyed at the end, whatever happened. */
const openClients = new Set<Socket>();

function connect(port: number): Socket {
  const s = net.connect({ host: HOST, port });
  openClients.add(s);
  s.once('close', () => openClients.delete(s));
  return s;
}

/**
 * A socket's end, bounded: resolves with the error code seen (or '' for a clean close) once it closed,
 * or 'timeout' (after destroying it) if it is still open after `ms`.
 */
function closed(sock: Socket, ms: number): Promise<string> {
  return new Promise((resolve) => {
    let code = '';
    sock.on('error', (e: NodeJS.ErrnoException) => (code ||= e.code ?? 'error'));
    if (sock.destroyed && !openClients.has(sock)) return resolve(code);
    const timer = setTimeout(() => {
      sock.destroy();
      resolve('timeout');
    }, ms);
    sock.once('close', () => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/**
 * Resets a socket (RST). libuv refuses a reset while a shutdown is pending, so after our own end() the
 * reset waits for the FIN to have been sent; a socket that still has not closed a second later is
 * destroyed (plain close).
 */
function resetSoon(sock: Socket): void {
  const go = (): void => {
    if (sock.destroyed) return;
    try {
      sock.resetAndDestroy();
    } catch {
      sock.destroy();
    }
    setTimeout(() => sock.destroy(), 1000).unref();
  };
  if (sock.writableEnded && !sock.writableFinished) sock.once('finish', go);
  else go();
}

/** A short request/response: `N size`; 'ok' when exactly `size` bytes of 'n' came back and lb closed. */
function normalConn(port: number, size: number, ms: number): Promise<string> {
  const sock = connect(port);
  let got = 0;
  let bad = false;
  sock.on('connect', () => {
    sock.setNoDelay(true);
    sock.write(`N ${size}\n`);
  });
  sock.on('data', (c: Buffer) => {
    got += c.length;
    for (let i = 0; i < c.length && !bad; i += 997) if (c[i] !== 0x6e) bad = true;
  });
  return closed(sock, ms).then((code) => {
    if (code) return code;
    if (bad) return 'corrupt';
    return got === size ? 'ok' : got < size ? 'short' : 'long';
  });
}

// ----------------------------------------------------------------------------------------- phase 1

interface IntegrityTotals {
  streams: number;
  ok: number;
  verifiedBytes: number;
  differing: number;
  extra: number;
  missing: number;
  shaMismatch: number;
  failed: Record<string, number>;
}

const SIZES: [number, number][] = [
  [0, 4], [1, 4], [1000, 8], [16 << 10, 12], [64 << 10, 12], [256 << 10, 12], [MiB, 16], [4 * MiB, 14], [16 * MiB, 12], [64 * MiB, 6],
];
const SIZE_WEIGHT = SIZES.reduce((a, [, w]) => a + w, 0);

function pickSize(r: number): number {
  let x = r * SIZE_WEIGHT;
  for (const [s, w] of SIZES) {
    if (x < w) return s;
    x -= w;
  }
  return 0;
}

/** One integrity stream: upload and download at once; the backend's trailer carries its view. */
function integrityConn(port: number, up: number, down: number, seed: number, halfClose: boolean, t: IntegrityTotals): Promise<void> {
  const sock = connect(port);
  const check = new StreamCheck(downloadSeed(seed), down);
  const upHash = createHash('sha256');
  let trailer = Buffer.alloc(0);
  let uploaded = false;
  let progress = 0;
  let stalled = false;
  // A stream may take long on a loaded machine; one that moves no byte for 20 s is dead.
  const watchdog = setInterval(() => {
    const now = sock.bytesRead + sock.bytesWritten;
    if (now === progress) {
      stalled = true;
      sock.destroy();
    }
    progress = now;
  }, 20_000);
  sock.on('connect', () => {
    sock.setNoDelay(true);
    sock.write(`I ${up} ${down} ${seed}\n`);
    void writeStream(sock, new StreamGen(uploadSeed(seed), up), upHash).then((ok) => {
      uploaded = ok;
      if (ok && halfClose) sock.end();
    });
  });
  sock.on('data', (c: Buffer) => {
    const n = Math.min(c.length, check.missing);
    if (n > 0) check.feed(c.subarray(0, n));
    if (n < c.length) trailer = Buffer.concat([trailer, c.subarray(n)]);
  });
  return closed(sock, P.integrityMs).then((code) => {
    clearInterval(watchdog);
    t.streams++;
    t.differing += check.differing;
    t.missing += check.missing;
    if (trailer.length > TRAILER_BYTES) t.extra += trailer.length - TRAILER_BYTES;
    if (trailer.length < TRAILER_BYTES || !uploaded) {
      // The stream ended early. Without the trailer the upload was never confirmed: counted as lost.
      tally(t.failed, stalled ? 'stalled' : code || (uploaded ? 'no-trailer' : 'upload-cut'));
      if (trailer.length < TRAILER_BYTES) t.missing += up;
      return;
    }
    const upDiffering = trailer.readUInt32BE(64);
    const upExtra = trailer.readUInt32BE(68);
    t.differing += upDiffering;
    t.extra += upExtra;
    const shaOk = trailer.subarray(0, 32).equals(check.hash.digest()) && trailer.subarray(32, 64).equals(upHash.digest());
    if (!shaOk) t.shaMismatch++;
    if (shaOk && check.differing === 0 && check.extra === 0 && upDiffering === 0 && upExtra === 0 && check.done) {
      t.ok++;
      t.verifiedBytes += up + down;
    } else tally(t.failed, 'corrupt');
  });
}

async function phaseIntegrity(ports: Ports, lb: RunningProxy): Promise<void> {
  const t: IntegrityTotals = { streams: 0, ok: 0, verifiedBytes: 0, differing: 0, extra: 0, missing: 0, shaMismatch: 0, failed: {} };
  // The plan: mixed sizes each way, a third of the clients half-closing after their upload.
  const plan: { up: number; down: number; half: boolean }[] = [];
  let r = 12345;
  const rnd = (): number => ((r = (Math.imul(r, 1103515245) + 12345) >>> 0) / 4294967296);
  for (let planned = 0; planned < P.integrityBytes && plan.length < 100_000; ) {
    const up = pickSize(rnd());
    const down = pickSize(rnd());
    plan.push({ up, down, half: rnd() < 1 / 3 });
    planned += up + down;
  }
  const info0 = await ctl(ports.control, 'show info');
  const t0 = Date.now();
  const deadline = t0 + P.integrityMs;
  const ran = await pool(plan.length, P.integrityConcurrency, deadline, (i) =>
    integrityConn(ports.main, plan[i]!.up, plan[i]!.down, 1000 + i, plan[i]!.half, t),
  );
  const ms = Date.now() - t0;
  const info1 = await ctl(ports.control, 'show info');
  const lbBytes =
    info0 && info1
      ? Number(infoField(info1, 'BytesIn')) + Number(infoField(info1, 'BytesOut')) - Number(infoField(info0, 'BytesIn')) - Number(infoField(info0, 'BytesOut'))
      : NaN;
  const corrupted = t.differing + t.extra + t.missing;
  row(
    'integrity',
    '≥ 1 GiB relayed, sha256 both ways, 0 bytes corrupted',
    `${mib(t.verifiedBytes)} MiB verified in ${fmt(t.ok)}/${fmt(ran)} streams (${fmt(P.integrityConcurrency)} at once, ` +
      `${secs(ms)}, ${(t.verifiedBytes / MiB / (ms / 1000)).toFixed(0)} MiB/s; lb counted ${Number.isFinite(lbBytes) ? mib(lbBytes) : '?'} MiB); ` +
      `corrupted ${fmt(corrupted)} bytes (differing ${fmt(t.differing)}, lost ${fmt(t.missing)}, extra ${fmt(t.extra)}), sha256 mismatches ${t.shaMismatch}` +
      (Object.keys(t.failed).length ? `; failed streams: ${tallyText(t.failed)}` : ''),
    corrupted === 0 && t.shaMismatch === 0 && t.ok === ran && !lb.exited ? 'ok' : 'FAIL',
    true,
  );
  if (ran < plan.length) notes.push(`integrity: the phase's ${secs(P.integrityMs)} ran out after ${ran} of ${plan.length} planned streams`);
  if (t.verifiedBytes < 1 << 30 && P.integrityBytes >= 1 << 30) notes.push('integrity: less than 1 GiB verified');
}

// ----------------------------------------------------------------------------------------- phase 2

const FD_KINDS = ['normal', 'client-reset', 'client-reset-at-connect', 'half-close-then-reset', 'backend-reset', 'refused'] as const;
type FdKind = (typeof FD_KINDS)[number] | 'idle-timeout';
/** Shares of the non-idle connections; idle-timeout connections are IDLE_SHARE of all, run in a pool of their own. */
const FD_WEIGHTS: Record<(typeof FD_KINDS)[number], number> = {
  normal: 40,
  'client-reset': 12,
  'client-reset-at-connect': 6,
  'half-close-then-reset': 20,
  'backend-reset': 12,
  refused: 10,
};
const IDLE_SHARE = 0.04;

async function fdConn(ports: Ports, kind: FdKind, i: number, outcomes: Record<string, Record<string, number>>): Promise<void> {
  const ms = 15_000;
  let out: string;
  switch (kind) {
    case 'normal':
      out = await normalConn(ports.main, [0, 100, 4096, 65536, 262144][i % 5]!, ms);
      break;
    case 'client-reset':
    case 'half-close-then-reset': {
      const sock = connect(ports.main);
      // Half of them reset before any byte came back, half after the first chunk of the 1 MiB.
      const early = i % 2 === 0;
      sock.on('connect', () => {
        sock.write(`S ${i}\n`);
        if (kind === 'half-close-then-reset') sock.end();
        if (early) resetSoon(sock);
      });
      sock.once('data', () => resetSoon(sock));
      const code = await closed(sock, ms);
      out = code === 'timeout' ? code : 'ok';
      break;
    }
    case 'client-reset-at-connect': {
      const sock = connect(ports.main);
      sock.on('connect', () => resetSoon(sock));
      const code = await closed(sock, ms);
      out = code === 'timeout' ? code : 'ok';
      break;
    }
    case 'backend-reset': {
      const sock = connect(ports.main);
      sock.on('connect', () => sock.write('R\n'));
      sock.resume();
      const code = await closed(sock, ms);
      out = code === 'timeout' ? code : 'ok';
      break;
    }
    case 'refused': {
      const sock = connect(ports.refused);
      sock.resume();
      const code = await closed(sock, ms);
      out = code === 'timeout' ? code : 'ok';
      break;
    }
    case 'idle-timeout': {
      const t0 = Date.now();
      const sock = connect(ports.idle);
      sock.resume();
      const code = await closed(sock, IDLE_TIMEOUT_MS + ms);
      // lb closes after idle_timeout; much earlier means it was closed for another reason.
      out = code === 'timeout' ? code : Date.now() - t0 < IDLE_TIMEOUT_MS - 50 ? 'closed-early' : 'ok';
      break;
    }
  }
  tally((outcomes[kind] ??= {}), out);
}

/**
 * Waits (at most `ms`) until lb has no connection open and no more sockets and other fds than `base`;
 * if it does not get there, saves what lb still holds (saveDiagnostics) under `label`.
 */
async function settleLb(label: string, lb: RunningProxy, control: number, base: FdCensus, ms: number): Promise<{ census: FdCensus; show: string | null; waited: number }> {
  const t0 = Date.now();
  for (;;) {
    const census = fdCensus(lb.pid);
    const show = await ctl(control, 'show', 3000);
    const cur = sumCurrent(show);
    const settled = census.sockets <= base.sockets && census.other <= base.other && cur === 0;
    if (settled || Date.now() - t0 > ms || lb.exited) {
      if (!settled && !lb.exited) notes.push(`${label}: lb had not settled after ${secs(ms)} (current ${cur ?? '?'}): ${saveDiagnostics(label, lb.pid, show)}`);
      return { census, show, waited: Date.now() - t0 };
    }
    await sleep(250);
  }
}

async function phaseFds(ports: Ports, lb: RunningProxy, peers: Helper, workers: number): Promise<void> {
  // Baseline once lb is quiet: nothing open, and one of each kind done so that lazily opened fds exist.
  const warm: Record<string, Record<string, number>> = {};
  for (const k of [...FD_KINDS, 'idle-timeout' as const]) await fdConn(ports, k, 1, warm);
  const pre = await settleLb('fds-before', lb, ports.control, { total: 0, sockets: 1 << 30, pipes: 0, other: 1 << 30, otherKinds: {} }, 10_000);
  await sleep(500);
  const base = fdCensus(lb.pid);
  const peers0 = await peers.call<PeerStats>('stats', null, 5000);
  if (sumCurrent(pre.show) !== 0) notes.push(`fds: before the phase, show said current ${sumCurrent(pre.show)}`);

  const idleN = Math.round(P.fdConns * IDLE_SHARE);
  const mainN = P.fdConns - idleN;
  const kinds: (typeof FD_KINDS)[number][] = [];
  for (const k of FD_KINDS) for (let j = 0; j < FD_WEIGHTS[k]; j++) kinds.push(k);
  const outcomes: Record<string, Record<string, number>> = {};
  const t0 = Date.now();
  const deadline = t0 + P.fdMs;
  let progressAt = 0;
  const [ranMain, ranIdle] = await Promise.all([
    pool(mainN, P.fdConcurrency, deadline, async (i) => {
      // A fixed interleaving (i * 7 walks the 100 slots in a different order each lap).
      await fdConn(ports, kinds[(i * 7 + Math.floor(i / kinds.length)) % kinds.length]!, i, outcomes);
      if (i - progressAt >= 20_000) {
        progressAt = i;
        process.stderr.write(`chaos: fds: ${fmt(i)} connections, ${secs(Date.now() - t0)}\n`);
      }
    }),
    pool(idleN, P.fdIdleConcurrency, deadline, (i) => fdConn(ports, 'idle-timeout', i, outcomes)),
  ]);
  const ms = Date.now() - t0;
  const after = await settleLb('fds', lb, ports.control, base, 15_000);
  const peers1 = await peers.call<PeerStats>('stats', null, 5000);
  const leakedSockets = Math.max(0, after.census.sockets - base.sockets);
  const leakedOther = Math.max(0, after.census.other - base.other);
  // The splice relay keeps up to 64 empty pipes per worker for reuse (2 fds each): more than that is a leak.
  const pipeBound = Math.max(base.pipes, 2 * 64 * workers);
  const leakedPipes = Math.max(0, after.census.pipes - pipeBound);
  const cur = sumCurrent(after.show);
  const ran = ranMain + ranIdle;
  const unexpected: Record<string, number> = {};
  for (const [k, o] of Object.entries(outcomes)) for (const [res, n] of Object.entries(o)) if (res !== 'ok') tally(unexpected, `${k}:${res}`, n);
  const leaked = leakedSockets + leakedOther + leakedPipes;
  row(
    'fds',
    `0 fds leaked over ${fmt(P.fdConns)} mixed connections`,
    `${fmt(leaked)} leaked after ${fmt(ran)} connections in ${secs(ms)} (${fmt(ran / (ms / 1000))}/s) and ${secs(after.waited)} of settling: ` +
      `lb fds ${fmt(base.total)} → ${fmt(after.census.total)} (sockets ${base.sockets} → ${after.census.sockets}, ` +
      `pipes ${base.pipes} → ${after.census.pipes} [pool ≤ ${pipeBound}], other ${base.other} → ${after.census.other}; ${threadCount(lb.pid)} threads, one fd table)`,
    leaked === 0 && ran === P.fdConns && !lb.exited ? 'ok' : 'FAIL',
    true,
  );
  row(
    'fds',
    '`show` says current 0 afterwards',
    cur === null ? 'no answer' : `current ${cur}` + (cur ? ` (${[...currents(after.show!)].filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''),
    cur === 0 ? 'ok' : 'FAIL',
    true,
  );
  row(
    'fds',
    'every client connection ended as its kind should (none hung)',
    `${Object.entries(outcomes).map(([k, o]) => `${k} ${fmt(Object.values(o).reduce((a, b) => a + b, 0))}`).join(', ')}; unexpected: ${tallyText(unexpected)}; ` +
      `backend sockets open ${peers0.open} → ${peers1.open}`,
    Object.keys(unexpected).some((k) => k.endsWith(':timeout')) || peers1.open > peers0.open ? 'FAIL' : Object.keys(unexpected).length ? 'warn' : 'ok',
    Object.keys(unexpected).some((k) => k.endsWith(':timeout')),
  );
  if (leakedOther) notes.push(`fds: other fds before ${JSON.stringify(base.otherKinds)}, after ${JSON.stringify(after.census.otherKinds)}`);
}

// ----------------------------------------------------------------------------------------- phase 3

async function phaseReloads(ports: Ports, lb: RunningProxy, cfgFile: string, log: LogWatch): Promise<void> {
  let stop = false;
  let total = 0;
  const failed: Record<string, number> = {};
  const sizes = [0, 10, 1000, 16384];
  const t0 = Date.now();
  const hardStop = t0 + P.reloadMs + 30_000;
  const load = Promise.all(
    Array.from({ length: P.reloadConcurrency }, async (_, w) => {
      for (let i = 0; !stop && Date.now() < hardStop; i++) {
        const out = await normalConn(ports.main, sizes[(i + w) % sizes.length]!, 10_000);
        total++;
        if (out !== 'ok') tally(failed, out);
      }
    }),
  );
  await sleep(300); // the load is running before the first signal
  let done = 0;
  let failedReloads = 0;
  let slowest = 0;
  const deadline = t0 + P.reloadMs;
  for (let i = 1; i <= P.reloads && Date.now() < deadline && !lb.exited; i++) {
    const before = log.count('reloaded') + log.count('reload-failed');
    // The last reload goes back to the first config, which the later phases run with.
    fs.writeFileSync(cfgFile, lbConfig(ports, i === P.reloads ? 0 : i));
    const r0 = Date.now();
    process.kill(lb.pid, 'SIGHUP');
    while (log.count('reloaded') + log.count('reload-failed') === before && Date.now() - r0 < 15_000 && !lb.exited) await sleep(10);
    slowest = Math.max(slowest, Date.now() - r0);
    if (log.count('reloaded') + log.count('reload-failed') === before) {
      notes.push(`reloads: reload ${i} not reported within 15 s`);
      break;
    }
    done++;
  }
  failedReloads = log.count('reload-failed');
  stop = true;
  await load;
  const ms = Date.now() - t0;
  const nFailed = Object.values(failed).reduce((a, b) => a + b, 0);
  row(
    'reloads',
    `${P.reloads} reloads under load, 0 connections failed`,
    `${done} SIGHUPs (${failedReloads} reload-failed, slowest ${slowest} ms) in ${secs(ms)}; ${fmt(nFailed)} of ${fmt(total)} connections failed` +
      (nFailed ? ` (${tallyText(failed)})` : ''),
    nFailed === 0 && done === P.reloads && failedReloads === 0 && !lb.exited ? 'ok' : 'FAIL',
    true,
  );
}

// ----------------------------------------------------------------------------------------- phase 4

async function phaseSlow(ports: Ports, lb: RunningProxy, peers: Helper): Promise<void> {
  const settled = await settleLb('slow-before', lb, ports.control, { total: 0, sockets: 1 << 30, pipes: 0, other: 1 << 30, otherKinds: {} }, 10_000);
  if (sumCurrent(settled.show) !== 0) notes.push(`slow: before the phase, show said current ${sumCurrent(settled.show)}`);
  // Warm-up: the first connections compile the relay's code paths; that is not the slow peers' cost.
  for (let i = 0; i < 200; i++) await normalConn(ports.main, 4096, 5000);
  const peers0 = await peers.call<PeerStats>('stats', null, 5000);
  const rss0 = rssKb([lb.pid]) * 1024;
  const socks: Socket[] = [];
  let clientRead = 0;
  let clientWritten = 0;
  const timers: NodeJS.Timeout[] = [];
  // Slow readers: one chunk every 200 ms from a backend that writes as fast as lb takes it.
  for (let i = 0; i < P.slowPeers; i++) {
    const s = connect(ports.main);
    s.on('error', () => undefined);
    s.on('connect', () => s.write('F\n'));
    s.on('data', (c: Buffer) => {
      clientRead += c.length;
      s.pause();
    });
    timers.push(setInterval(() => s.resume(), 200));
    socks.push(s);
  }
  // Fast writers to backends that read one chunk every 200 ms.
  for (let i = 0; i < P.slowPeers; i++) {
    const s = connect(ports.main);
    s.on('error', () => undefined);
    s.on('connect', () => {
      s.write('W\n');
      const gen = new StreamGen(7 + i, Number.MAX_SAFE_INTEGER);
      const pump = (): void => {
        while (!s.destroyed && gen.remaining > 0) {
          const piece = gen.next(64 << 10);
          clientWritten += piece.length;
          if (!s.write(piece)) return;
        }
      };
      s.on('drain', pump);
      pump();
    });
    socks.push(s);
  }
  // Meanwhile: how long a short request takes, and lb's RSS.
  let rssMax = rss0;
  const lat: number[] = [];
  const failedProbes: Record<string, number> = {};
  const t0 = Date.now();
  while (Date.now() - t0 < P.slowMs && !lb.exited) {
    const p0 = Date.now();
    const out = await normalConn(ports.main, 100, 5000);
    if (out === 'ok') lat.push(Date.now() - p0);
    else tally(failedProbes, out);
    rssMax = Math.max(rssMax, rssKb([lb.pid]) * 1024);
    await sleep(250);
  }
  const rssEnd = rssKb([lb.pid]) * 1024;
  const peers1 = await peers.call<PeerStats>('stats', null, 5000);
  const show = await ctl(ports.control, 'show', 3000);
  for (const t of timers) clearInterval(t);
  // Reset, not FIN: a FIN from a fast writer would (rightly) wait behind the megabytes its slow backend has
  // yet to read.
  for (const s of socks) resetSoon(s);
  const after = await settleLb('slow', lb, ports.control, { total: 0, sockets: 1 << 30, pipes: 0, other: 1 << 30, otherKinds: {} }, 10_000);
  lat.sort((a, b) => a - b);
  const fire = peers1.firehoseWritten - peers0.firehoseWritten;
  const slowRead = peers1.slowRead - peers0.slowRead;
  const growth = rssMax - rss0;
  row(
    'slow peers',
    `RSS growth ≲ +30 MiB with ${P.slowPeers} slow clients + ${P.slowPeers} slow backends`,
    `+${mib(growth)} MiB (RSS ${mib(rss0)} → max ${mib(rssMax)}, ${mib(rssEnd)} at the end, over ${secs(P.slowMs)}; ` +
      `${sumCurrent(show) ?? '?'} open). Backpressure: backends wrote ${mib(fire)} MiB, slow clients read ${mib(clientRead)} MiB; ` +
      `clients wrote ${mib(clientWritten)} MiB, slow backends read ${mib(slowRead)} MiB`,
    growth <= 30 * MiB && !lb.exited ? 'ok' : 'warn',
  );
  row(
    'slow peers',
    'short requests still served meanwhile',
    `${lat.length} probes: median ${lat[Math.floor(lat.length / 2)] ?? '?'} ms, max ${lat[lat.length - 1] ?? '?'} ms; failed: ${tallyText(failedProbes)}; ` +
      `current ${sumCurrent(after.show) ?? '?'} after closing them (${secs(after.waited)})`,
    Object.keys(failedProbes).length === 0 && sumCurrent(after.show) === 0 ? 'ok' : 'warn',
  );
}

// ----------------------------------------------------------------------------------------- phase 5

/** Opens a connection to `H` and resolves true once the backend's greeting came back through lb. */
function holdConn(port: number, ms: number, held: Socket[]): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port);
    let code = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve('no-greeting');
    }, ms);
    s.on('error', (e: NodeJS.ErrnoException) => (code ||= e.code ?? 'error'));
    s.on('connect', () => s.write('H\n'));
    s.once('data', () => {
      clearTimeout(timer);
      held.push(s);
      resolve('ok');
    });
    s.once('close', () => {
      clearTimeout(timer);
      resolve(code || 'closed');
    });
  });
}

async function phaseConns(ports: Ports, lb: RunningProxy, peers: Helper): Promise<void> {
  const held: Socket[] = [];
  const fails: Record<string, number> = {};
  const base = fdCensus(lb.pid);
  const nofile = nofileLimits().soft; // lb's, inherited from this process
  const theoretical = Math.floor((nofile - base.total) / 2);
  const cap = Math.min(theoretical + 50, P.connsMax);
  const t0 = Date.now();
  const deadline = t0 + P.connsMs;
  // Waves of 200 at once; stop when a whole wave failed (lb out of fds) or at the theoretical limit.
  let lastWaveOk = 1;
  while (lastWaveOk > 0 && held.length < cap && Date.now() < deadline && !lb.exited) {
    const wave = Math.min(500, cap - held.length);
    let ok = 0;
    await pool(wave, 200, deadline, async () => {
      const r = await holdConn(ports.main, 5000, held);
      if (r === 'ok') ok++;
      else tally(fails, r);
    });
    lastWaveOk = ok;
  }
  const reached = held.length;
  const openMs = Date.now() - t0;
  const atLimit = fdCensus(lb.pid);
  const peersHeld = (await peers.call<PeerStats>('stats', null, 5000)).held;
  const showAtLimit = await ctl(ports.control, 'show', 3000);
  // Release 100 and see that lb serves again.
  const released = Math.min(100, held.length);
  for (const s of held.splice(0, released)) s.destroy();
  const r0 = Date.now();
  while (fdCensus(lb.pid).total > atLimit.total - 1.5 * released && Date.now() - r0 < 10_000) await sleep(100);
  const show = await ctl(ports.control, 'show', 5000);
  const fresh: Socket[] = [];
  const freshOut = await holdConn(ports.main, 5000, fresh);
  for (const s of fresh) s.destroy();
  const cur = sumCurrent(show);
  for (const s of held) s.destroy();
  const after = await settleLb('conns', lb, ports.control, base, 20_000);
  const peersAfter = (await peers.call<PeerStats>('stats', null, 5000)).held;
  row(
    'conns',
    'concurrent connections up to the fd limit',
    `${fmt(reached)} held (greeting through lb; backend held ${fmt(peersHeld)}) in ${secs(openMs)}; lb fds ${fmt(atLimit.total)} of ulimit -n ${fmt(nofile)} ` +
      `(room for ${fmt(theoretical)} at 2 per connection); refused beyond: ${tallyText(fails)}`,
    reached >= Math.min(theoretical * 0.98, P.connsMax) ? 'ok' : 'warn',
  );
  row(
    'conns',
    'lb responsive at and after the limit',
    `show at the peak: ${showAtLimit === null ? 'no answer (no fd to accept it)' : `answered, current ${sumCurrent(showAtLimit)}`}; ` +
      `after releasing ${released}: show ${show === null ? 'NO ANSWER' : `answered, current ${cur}`}, a new connection ${freshOut}; ` +
      `after releasing all: current ${sumCurrent(after.show) ?? '?'}, lb fds ${fmt(after.census.total)}, backend holds ${peersAfter} (${secs(after.waited)})`,
    show !== null && freshOut === 'ok' && sumCurrent(after.show) === 0 && !lb.exited ? 'ok' : 'FAIL',
  );
}

// --------------------------------------------------------------------------------------------- main

async function main(): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lb-chaos-'));
  runDir = dir;
  const ver = lbVersion(LB_ROOT);
  const started = Date.now();
  let peers: Helper | null = null;
  let lb: RunningProxy | null = null;
  // Nothing may outlive a run that went wrong: a watchdog ends it.
  const budgetMs = P.integrityMs + P.fdMs + P.reloadMs + P.slowMs + P.connsMs + 120_000;
  const watchdog = setTimeout(() => {
    process.stderr.write(`chaos: the run exceeded its ${secs(budgetMs)} budget; stopping\n`);
    lb?.kill();
    peers?.kill();
    process.exit(1);
  }, budgetMs);
  watchdog.unref();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      lb?.kill();
      peers?.kill();
      process.exit(1);
    });
  }
  let code = 0;
  try {
    const ports: Ports = {
      main: await freePort(),
      idle: await freePort(),
      refused: await freePort(),
      extra: await freePort(),
      control: await freePort(),
      backends: [await freePort(), await freePort(), await freePort(), await freePort()],
      dead: await freePort(), // nothing ever listens there
    };
    peers = Helper.start('chaos-peers', path.join(HERE, 'lib/chaos-peers.ts'));
    await peers.call('start', { ports: ports.backends }, 30_000);

    const cfgFile = path.join(dir, 'lb.toml');
    fs.writeFileSync(cfgFile, lbConfig(ports, 0));
    const stderrFile = path.join(dir, 'lb.stderr');
    const errFd = fs.openSync(stderrFile, 'w');
    // Own process group (detached), so that stop() reaches everything lb started.
    const child = spawn(process.execPath, [LB_MAIN, 'run', cfgFile], { detached: true, stdio: ['ignore', 'ignore', errFd] });
    fs.closeSync(errFd);
    lb = new RunningProxy('lb', child, stderrFile);
    await lb.waitReady(() => /listening on/.test(lb!.stderrTail(4000)), 30_000);
    const log = new LogWatch(stderrFile);
    const info = await ctl(ports.control, 'show info');
    const workers = Number(infoField(info, 'Workers')) || 1;
    process.stderr.write(`chaos: lb pid ${lb.pid}, ${workers} workers, splice ${infoField(info, 'Splice')}, ulimit -n ${nofileLimits().soft}, run dir ${dir}\n`);
    const header = [
      `# lb chaos run (${quick ? 'quick' : 'full'}${opt.phases ? `, phases ${opt.phases}` : ''})`,
      '',
      `lb ${ver.commit}${LB_ROOT !== REPO ? ` (${LB_ROOT})` : ''}${ver.modified.length ? ` + modified ${ver.modified.join(' ')}` : ''}, Node ${process.version}, ${workers} workers, ` +
        `splice: ${infoField(info, 'Splice') ?? '?'}; ${os.cpus().length} cores, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} at the start; ulimit -n ${nofileLimits().soft}`,
      '',
    ];

    // lb's RSS and threads after each phase: memory that only grows across phases is worth a look.
    const trail: string[] = [`start ${mib(rssKb([lb.pid]) * 1024)} MiB`];
    const run = async (ph: Phase, f: () => Promise<void>): Promise<void> => {
      if (!phases.has(ph)) return;
      if (lb!.exited) {
        row(ph, 'lb running', `lb exited before this phase (code ${lb!.exitCode}, signal ${lb!.exitSignal})`, 'FAIL', true);
        return;
      }
      const t = Date.now();
      process.stderr.write(`chaos: ${ph}...\n`);
      try {
        await f();
      } catch (err) {
        row(ph, 'phase ran', `error: ${(err as Error).stack ?? err}`, 'FAIL', true);
      }
      process.stderr.write(`chaos: ${ph} took ${secs(Date.now() - t)}\n`);
      if (!lb!.exited) trail.push(`${ph} ${mib(rssKb([lb!.pid]) * 1024)} MiB`);
    };
    // Slow peers first: their RSS growth is measured from a fresh lb, whose heap has not yet grown to what
    // the other phases' traffic makes it (growth would then hide in room a busier heap already has).
    await run('slow', () => phaseSlow(ports, lb!, peers!));
    await run('integrity', () => phaseIntegrity(ports, lb!));
    await run('fds', () => phaseFds(ports, lb!, peers!, workers));
    await run('reloads', () => phaseReloads(ports, lb!, cfgFile, log));
    await run('conns', () => phaseConns(ports, lb!, peers!));

    notes.push(`lb's RSS after each phase: ${trail.join(', ')}; ${threadCount(lb.pid)} threads at the end`);
    // SIGTERM with nothing open: lb must be gone well within its drain timeout.
    const alive = !lb.exited;
    const stop = await lb.stop(DRAIN_TIMEOUT_MS + 3000);
    row('end', 'lb alive through the run; exits on SIGTERM', alive ? `exited in ${stop.ms} ms (code ${stop.code}${stop.clean ? '' : ', needed SIGKILL'})` : `lb died: code ${lb.exitCode}, signal ${lb.exitSignal}: ${lb.stderrGist()}`, alive && stop.clean ? 'ok' : 'FAIL', !alive);
    log.poll();
    const warnings = Object.entries(log.events).filter(([k]) => !k.startsWith('info') && !k.startsWith('debug'));
    if (warnings.length) notes.push(`lb's warnings and errors: ${warnings.map(([k, v]) => `${k} ×${v}`).join(', ')}; first of each: ${[...log.samples.values()].map((s) => `\`${s}\``).join(' ')}`);
    if (log.other.length) notes.push(`lb's stderr had other lines: ${log.other.map((s) => `\`${s}\``).join(' ')}`);

    const failedHard = rows.filter((r) => r.hard && r.verdict === 'FAIL');
    code = failedHard.length ? 1 : 0;
    const out = [
      ...header,
      '| phase | criterion | result | verdict |',
      '|---|---|---|---|',
      ...rows.map((r) => `| ${r.phase} | ${r.criterion} | ${r.result.replace(/\|/g, '\\|')} | ${r.verdict}${r.hard && r.verdict === 'FAIL' ? ' (hard)' : ''} |`),
      '',
      ...notes.map((n) => `- ${n}`),
      ...(notes.length ? [''] : []),
      `Total ${secs(Date.now() - started)}; ${failedHard.length ? `${failedHard.length} hard criteria failed` : 'every hard criterion held'}.`,
      '',
    ];
    process.stdout.write(out.join('\n'));
  } catch (err) {
    process.stderr.write(`chaos: ${(err as Error).stack ?? err}\n`);
    code = 1;
  } finally {
    for (const s of openClients) s.destroy();
    if (lb && !lb.exited) await lb.stop(DRAIN_TIMEOUT_MS + 3000);
    await peers?.stop();
    clearTimeout(watchdog);
    if (opt['keep-tmp'] || keepDir || code !== 0) process.stderr.write(`chaos: run directory kept: ${dir}\n`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  return code;
}

// ------------------------------------------------------------------------------------------- start

// The conns phase needs ~2 fds per connection in lb, in this process and in the backends' helper: raise
// the soft limit to the hard one by running again under a shell that did (Node cannot call setrlimit).
// lb and the helper inherit it.
await withRaisedNofile('LB_CHAOS_NOFILE', main);
