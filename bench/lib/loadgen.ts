// The load generator: a pool of helper processes (see ipc.ts), each driving its share of the connections
// with its own event loop, so on a multi-core machine the generator is not the bottleneck of the figure.
//
// Every job has a warm-up (connections opened, JIT and caches warmed, nothing counted) and a measured
// window timed on the generator's own clock; work in flight when the window closes is not counted. Per
// connection state lives on the socket and the handlers are shared functions, so the generator spends as
// little as it can per connection and per request: its cost is in every figure, direct included.
//
// Run as a script it serves requests from the parent; imported, it gives the parent `LoadGen`.

import net, { type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { RATE_REQUEST, RATE_RESPONSE } from './backends.ts';
import { Helper, serveRequests } from './ipc.ts';

const HOST = '127.0.0.1';

// ------------------------------------------------------------------------------------------ histogram

/**
 * Latencies in log-spaced buckets 1% wide (values in µs): constant memory however many samples, mergeable
 * across processes by adding counts, and a percentile is off by at most 1%.
 */
export class Histogram {
  static readonly BASE = Math.log(1.01);
  counts = new Float64Array(2048); // 1.01^2047 µs ≈ 7e8 µs: anything a bounded run can produce
  n = 0;

  record(us: number): void {
    const i = us <= 1 ? 0 : Math.min(2047, Math.ceil(Math.log(us) / Histogram.BASE));
    this.counts[i]!++;
    this.n++;
  }

  /** Sparse form for IPC: [index, count] pairs. */
  toJSON(): [number, number][] {
    const out: [number, number][] = [];
    this.counts.forEach((c, i) => c && out.push([i, c]));
    return out;
  }

  add(pairs: [number, number][]): void {
    for (const [i, c] of pairs) {
      this.counts[i]! += c;
      this.n += c;
    }
  }

  /** The value (ms) below which `q` of the samples fall: the upper edge of that bucket. */
  quantileMs(q: number): number | null {
    if (this.n === 0) return null;
    const rank = Math.max(1, Math.ceil(q * this.n));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.pow(1.01, i) / 1000;
    }
    return null;
  }
}

// ------------------------------------------------------------------------------------------ job types

export interface Window {
  warmupMs: number;
  durationMs: number;
}

export interface BulkJob extends Window {
  port: number;
  streams: number;
}
export interface BulkPart {
  bytes: number;
  seconds: number;
  /** Streams that closed before the window ended (the proxy dropped them). */
  closedEarly: number;
  errors: Record<string, number>;
}

export interface RateJob extends Window {
  port: number;
  conns: number;
}
export interface RatePart {
  done: number;
  seconds: number;
  /** Connection times (connect → close), for the JSON only. */
  hist: [number, number][];
  /** Failures in the measured window, by errno or kind ("short-response"). */
  errors: Record<string, number>;
}

export interface LatencyJob extends Window {
  port: number;
  conns: number;
  size: number;
}
export interface LatencyPart {
  done: number;
  seconds: number;
  hist: [number, number][];
  errors: Record<string, number>;
}

export interface IdleJob {
  port: number;
  n: number;
  concurrency: number;
  timeoutMs: number;
}
export interface IdleResult {
  ok: number;
  failed: number;
  errors: Record<string, number>;
  ms: number;
}

function countError(errors: Record<string, number>, key: string): void {
  errors[key] = (errors[key] ?? 0) + 1;
}

// ---------------------------------------------------------------------------------- bulk (child side)

/** One read buffer for every stream: `onread` fills it in place, so the sink allocates nothing per read. */
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);

async function bulk(job: BulkJob): Promise<BulkPart> {
  let bytes = 0;
  let stopping = false;
  let closedEarly = 0;
  const errors: Record<string, number> = {};
  const onread = {
    buffer: READ_BUFFER,
    callback: (n: number): boolean => {
      bytes += n;
      return true;
    },
  };
  const socks: Socket[] = [];
  for (let i = 0; i < job.streams; i++) {
    const s = net.connect({ host: HOST, port: job.port, onread });
    s.on('error', (e: NodeJS.ErrnoException) => countError(errors, e.code ?? e.message));
    s.on('close', () => {
      if (!stopping) closedEarly++;
    });
    socks.push(s);
  }
  await sleep(job.warmupMs);
  const b0 = bytes;
  const t0 = performance.now();
  await sleep(job.durationMs);
  const b1 = bytes;
  const t1 = performance.now();
  stopping = true;
  for (const s of socks) s.destroy();
  return { bytes: b1 - b0, seconds: (t1 - t0) / 1000, closedEarly, errors };
}

// ------------------------------------------------------------------------ connection rate (child side)

interface RateSocket extends Socket {
  got: number;
  startedAt: number;
  errCode: string | null;
}

const rate = {
  port: 0,
  counting: false,
  stopping: false,
  inflight: 0,
  done: 0,
  errors: {} as Record<string, number>,
  hist: new Histogram(),
  drained: null as (() => void) | null,
};

function rateLaunch(): void {
  rate.inflight++;
  const s = net.connect(rate.port, HOST) as RateSocket;
  s.got = 0;
  s.startedAt = performance.now();
  s.errCode = null;
  s.on('connect', rateOnConnect);
  s.on('data', rateOnData);
  s.on('error', rateOnError);
  s.on('close', rateOnClose);
}

function rateOnConnect(this: RateSocket): void {
  this.write(RATE_REQUEST);
}

function rateOnData(this: RateSocket, d: Buffer): void {
  this.got += d.length;
}

function rateOnError(this: RateSocket, e: NodeJS.ErrnoException): void {
  this.errCode = e.code ?? e.message;
}

function rateOnClose(this: RateSocket): void {
  rate.inflight--;
  if (rate.counting) {
    // A connection counts when the whole response arrived and the server closed it, as wrk counts one.
    if (this.errCode === null && this.got >= RATE_RESPONSE.length) {
      rate.done++;
      rate.hist.record((performance.now() - this.startedAt) * 1000);
    } else countError(rate.errors, this.errCode ?? 'short-response');
  }
  if (!rate.stopping) rateLaunch();
  else if (rate.inflight === 0) rate.drained?.();
}

async function rateJob(job: RateJob): Promise<RatePart> {
  Object.assign(rate, { port: job.port, counting: false, stopping: false, inflight: 0, done: 0, errors: {}, hist: new Histogram() });
  for (let i = 0; i < job.conns; i++) rateLaunch();
  await sleep(job.warmupMs);
  rate.counting = true;
  const t0 = performance.now();
  await sleep(job.durationMs);
  const done = rate.done;
  const errors = { ...rate.errors };
  const t1 = performance.now();
  rate.counting = false;
  rate.stopping = true;
  // Let the connections in flight finish (bounded), so the next job starts from a quiet machine.
  if (rate.inflight > 0) {
    await Promise.race([new Promise<void>((r) => (rate.drained = r)), sleep(2000)]);
  }
  rate.drained = null;
  return { done, seconds: (t1 - t0) / 1000, hist: rate.hist.toJSON(), errors };
}

// ---------------------------------------------------------------- request/response latency (child side)

interface PingSocket extends Socket {
  got: number;
  sentAt: number;
}

const ping = {
  size: 64,
  msg: Buffer.alloc(64),
  counting: false,
  stopping: false,
  done: 0,
  hist: new Histogram(),
  errors: {} as Record<string, number>,
};

function pingSend(s: PingSocket): void {
  s.sentAt = performance.now();
  s.write(ping.msg);
}

function pingOnConnect(this: PingSocket): void {
  pingSend(this);
}

function pingOnData(this: PingSocket, d: Buffer): void {
  this.got += d.length;
  if (this.got < ping.size) return; // the answer came in pieces
  this.got -= ping.size;
  if (ping.counting) {
    ping.done++;
    ping.hist.record((performance.now() - this.sentAt) * 1000);
  }
  if (!ping.stopping) pingSend(this);
}

function pingOnError(this: PingSocket, e: NodeJS.ErrnoException): void {
  if (!ping.stopping) countError(ping.errors, e.code ?? e.message);
}

function pingOnClose(this: PingSocket): void {
  if (!ping.stopping) countError(ping.errors, 'closed');
}

async function latencyJob(job: LatencyJob): Promise<LatencyPart> {
  Object.assign(ping, {
    size: job.size,
    msg: Buffer.alloc(job.size, 0x70),
    counting: false,
    stopping: false,
    done: 0,
    hist: new Histogram(),
    errors: {},
  });
  const socks: PingSocket[] = [];
  for (let i = 0; i < job.conns; i++) {
    const s = net.connect({ host: HOST, port: job.port, noDelay: true }) as PingSocket;
    s.got = 0;
    s.sentAt = 0;
    s.on('connect', pingOnConnect);
    s.on('data', pingOnData);
    s.on('error', pingOnError);
    s.on('close', pingOnClose);
    socks.push(s);
  }
  await sleep(job.warmupMs);
  ping.counting = true;
  const t0 = performance.now();
  await sleep(job.durationMs);
  ping.counting = false;
  const t1 = performance.now();
  ping.stopping = true;
  for (const s of socks) s.destroy();
  return { done: ping.done, seconds: (t1 - t0) / 1000, hist: ping.hist.toJSON(), errors: ping.errors };
}

// ------------------------------------------------------------------------ idle connections (child side)

const idleSockets: Socket[] = [];

/** Opens n connections (at most `concurrency` connecting at once) and waits for each one's greeting. */
function idleOpen(job: IdleJob): Promise<IdleResult> {
  const t0 = performance.now();
  let started = 0;
  let inflight = 0;
  let ok = 0;
  let failed = 0;
  const errors: Record<string, number> = {};
  return new Promise((resolve) => {
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      resolve({ ok, failed, errors, ms: Math.round(performance.now() - t0) });
    };
    const timer = setTimeout(() => {
      countError(errors, 'timeout');
      finish();
    }, job.timeoutMs);
    const launch = (): void => {
      while (!finished && inflight < job.concurrency && started < job.n) {
        started++;
        inflight++;
        const s = net.connect({ host: HOST, port: job.port });
        let settled = false;
        const settle = (good: boolean, why?: string): void => {
          if (settled) return;
          settled = true;
          inflight--;
          if (good) ok++;
          else {
            failed++;
            countError(errors, why ?? 'error');
          }
          if (ok + failed >= job.n) finish();
          else setImmediate(launch);
        };
        s.once('data', () => {
          s.pause(); // idle from here on: nothing read, nothing written
          settle(true);
        });
        s.on('error', (e: NodeJS.ErrnoException) => settle(false, e.code ?? e.message));
        s.on('close', () => settle(false, 'closed-before-greeting'));
        idleSockets.push(s);
      }
    };
    launch();
  });
}

async function idleRelease(): Promise<number> {
  const n = idleSockets.length;
  for (const s of idleSockets.splice(0)) s.destroy();
  return n;
}

if (import.meta.main) {
  serveRequests({ bulk, rate: rateJob, latency: latencyJob, idleOpen, idleRelease });
}

// ------------------------------------------------------------------------------------ parent side

export interface BulkResult {
  gbps: number;
  closedEarly: number;
  errors: Record<string, number>;
}
export interface RateResult {
  connPerSec: number;
  conns: number;
  connP50Ms: number | null;
  connP99Ms: number | null;
  errors: Record<string, number>;
}
export interface LatencyResult {
  reqPerSec: number;
  requests: number;
  p50Ms: number | null;
  p99Ms: number | null;
  errors: Record<string, number>;
}

function mergeErrors(parts: { errors: Record<string, number> }[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of parts) for (const [k, v] of Object.entries(p.errors)) out[k] = (out[k] ?? 0) + v;
  return out;
}

/** Splits `total` connections over `ways` processes as evenly as possible (no empty share). */
function shares(total: number, ways: number): number[] {
  const n = Math.max(1, Math.min(ways, total));
  return Array.from({ length: n }, (_, i) => Math.floor(total / n) + (i < total % n ? 1 : 0));
}

export class LoadGen {
  readonly procs: Helper[];

  private constructor(procs: Helper[]) {
    this.procs = procs;
  }

  static start(count: number): LoadGen {
    const file = new URL(import.meta.url).pathname;
    return new LoadGen(Array.from({ length: count }, (_, i) => Helper.start(`loadgen-${i}`, file)));
  }

  get pids(): number[] {
    return this.procs.map((p) => p.pid);
  }

  /** Runs `op` on `ways` processes at once, each with its share of `total` connections. */
  private fanOut<T>(op: string, total: number, ways: number, job: (share: number) => object, timeoutMs: number): Promise<T[]> {
    return Promise.all(shares(total, Math.min(ways, this.procs.length)).map((n, i) => this.procs[i]!.call<T>(op, job(n), timeoutMs)));
  }

  private static deadline(w: Window): number {
    return w.warmupMs + w.durationMs + 10_000;
  }

  // Bulk and latency use one process, as iperf3 and `wrk -t1` do: a bulk sink costs the generator little
  // (one reused read buffer), and for latency a second busy generator process on a small machine only
  // adds scheduling delay to the tail. The connection rate is where the generator works hardest: it uses
  // every process, so that the direct figure is as close to the machine's limit as it can be.

  async bulk(port: number, streams: number, w: Window): Promise<BulkResult> {
    const parts = await this.fanOut<BulkPart>('bulk', streams, 1, (n) => ({ port, streams: n, ...w }), LoadGen.deadline(w));
    // Each part measured its own window; the windows coincide to within an IPC round trip.
    const bps = parts.reduce((sum, p) => sum + (p.bytes * 8) / p.seconds, 0);
    return { gbps: bps / 1e9, closedEarly: parts.reduce((n, p) => n + p.closedEarly, 0), errors: mergeErrors(parts) };
  }

  async rate(port: number, conns: number, w: Window): Promise<RateResult> {
    const parts = await this.fanOut<RatePart>('rate', conns, this.procs.length, (n) => ({ port, conns: n, ...w }), LoadGen.deadline(w));
    const hist = new Histogram();
    for (const p of parts) hist.add(p.hist);
    return {
      connPerSec: parts.reduce((sum, p) => sum + p.done / p.seconds, 0),
      conns: parts.reduce((n, p) => n + p.done, 0),
      connP50Ms: hist.quantileMs(0.5),
      connP99Ms: hist.quantileMs(0.99),
      errors: mergeErrors(parts),
    };
  }

  async latency(port: number, conns: number, size: number, w: Window): Promise<LatencyResult> {
    const parts = await this.fanOut<LatencyPart>('latency', conns, 1, (n) => ({ port, conns: n, size, ...w }), LoadGen.deadline(w));
    const hist = new Histogram();
    for (const p of parts) hist.add(p.hist);
    return {
      reqPerSec: parts.reduce((sum, p) => sum + p.done / p.seconds, 0),
      requests: hist.n,
      p50Ms: hist.quantileMs(0.5),
      p99Ms: hist.quantileMs(0.99),
      errors: mergeErrors(parts),
    };
  }

  /** Idle connections come from one process: they cost nothing to hold, only file descriptors. */
  idleOpen(port: number, n: number, timeoutMs: number): Promise<IdleResult> {
    return this.procs[0]!.call<IdleResult>('idleOpen', { port, n, concurrency: 200, timeoutMs }, timeoutMs + 5000);
  }

  idleRelease(): Promise<number> {
    return this.procs[0]!.call<number>('idleRelease', null, 10_000);
  }

  async stop(): Promise<void> {
    await Promise.all(this.procs.map((p) => p.stop()));
  }

  kill(): void {
    for (const p of this.procs) p.kill();
  }
}
