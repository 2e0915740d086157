// What the bench reads from /proc (Linux only): memory and CPU of process trees, machine CPU, fd limits,
// listening ports, and a port allocator outside the ephemeral range.

import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

const CLK_TCK = 100; // USER_HZ: 100 on every Linux ABI Node runs on

function readStat(pid: number): { ppid: number; utime: number; stime: number } | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm may contain spaces and parentheses: the fields start after the last ')'.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), utime: Number(f[11]), stime: Number(f[12]) };
  } catch {
    return null;
  }
}

/** `pid` and all its descendants (proxies that fork workers are measured whole). */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const st = readStat(Number(d));
    if (!st) continue;
    const list = children.get(st.ppid) ?? [];
    list.push(Number(d));
    children.set(st.ppid, list);
  }
  const out: number[] = [];
  const todo = [pid];
  while (todo.length) {
    const p = todo.pop()!;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

export function rssKb(pids: readonly number[]): number {
  let kb = 0;
  for (const pid of pids) {
    try {
      const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m);
      if (m) kb += Number(m[1]);
    } catch {
      /* exited */
    }
  }
  return kb;
}

export function fdCount(pids: readonly number[]): number {
  let n = 0;
  for (const pid of pids) {
    try {
      n += fs.readdirSync(`/proc/${pid}/fd`).length;
    } catch {
      /* exited */
    }
  }
  return n;
}

/** User and system CPU seconds of these processes so far. */
function cpuSeconds(pids: readonly number[]): { user: number; sys: number } {
  let user = 0;
  let sys = 0;
  for (const pid of pids) {
    const st = readStat(pid);
    user += st?.utime ?? 0;
    sys += st?.stime ?? 0;
  }
  return { user: user / CLK_TCK, sys: sys / CLK_TCK };
}

function machineTicks(): { total: number; idle: number; irq: number } {
  // cpu  user nice system idle iowait irq softirq steal
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  return { total: f.reduce((a, b) => a + b, 0), idle: f[3]! + f[4]!, irq: f[5]! + f[6]! };
}

export interface CpuUse {
  /** Length of the interval. */
  seconds: number;
  /** Per group of processes: % of one core over the interval (user + system). */
  groups: Record<string, number>;
  /** The system (kernel) part of each group's %: syscalls, and the TCP work done inside them. */
  groupsSys: Record<string, number>;
  /** The whole machine: % of all cores busy. */
  machine: number;
  /**
   * Softirq time of the machine, in % of one core: mostly the kernel's side of loopback TCP. Most of it is
   * also in the groups' system time (the kernel charges it to the process it interrupted).
   */
  softirq: number;
  /**
   * Busy time that is none of the groups', in % of one core: other users of this shared machine, kernel
   * threads, softirq work that interrupted no process of ours. When it is large, the figure was disturbed.
   */
  other: number;
}

const CORES = os.cpus().length;

/**
 * CPU use of named process groups (proxy, backend, load generator) and of the machine between start() and
 * stop(): shows which process was the limit, and when the machine itself was (then a figure ranks the
 * proxies by CPU cost more than it measures their ceiling).
 */
export class CpuMeter {
  private readonly groups: Record<string, number[]>;
  private t0 = 0;
  private m0 = { total: 0, idle: 0, irq: 0 };
  private c0: Record<string, { user: number; sys: number }> = {};

  constructor(groups: Record<string, number[]>) {
    this.groups = groups;
  }

  start(): void {
    this.t0 = performance.now();
    this.m0 = machineTicks();
    this.c0 = Object.fromEntries(Object.entries(this.groups).map(([k, pids]) => [k, cpuSeconds(pids)]));
  }

  stop(): CpuUse {
    const secs = (performance.now() - this.t0) / 1000;
    const m = machineTicks();
    const dt = m.total - this.m0.total;
    const groups: Record<string, number> = {};
    const groupsSys: Record<string, number> = {};
    for (const [k, pids] of Object.entries(this.groups)) {
      const c = cpuSeconds(pids);
      groups[k] = (100 * (c.user + c.sys - this.c0[k]!.user - this.c0[k]!.sys)) / secs;
      groupsSys[k] = (100 * (c.sys - this.c0[k]!.sys)) / secs;
    }
    const machine = dt > 0 ? (100 * (dt - (m.idle - this.m0.idle))) / dt : 0;
    const softirq = dt > 0 ? (100 * CORES * (m.irq - this.m0.irq)) / dt : 0;
    const ours = Object.values(groups).reduce((a, b) => a + b, 0);
    return { seconds: secs, groups, groupsSys, machine, softirq, other: Math.max(0, machine * CORES - ours) };
  }
}

/**
 * Waits (at most maxMs) until the machine is nearly idle over a 150 ms look, so that a sample does not start
 * while something else on this shared machine is busy. Returns the busy % of the last look.
 */
export async function waitQuiet(maxMs: number, busyBelow = 20): Promise<{ waitedMs: number; busy: number }> {
  const t0 = performance.now();
  for (;;) {
    const a = machineTicks();
    await sleep(150);
    const b = machineTicks();
    const dt = b.total - a.total;
    const busy = dt > 0 ? (100 * (dt - (b.idle - a.idle))) / dt : 0;
    const waitedMs = Math.round(performance.now() - t0);
    if (busy < busyBelow || waitedMs >= maxMs) return { waitedMs, busy };
  }
}

/** Soft and hard RLIMIT_NOFILE of this process, as a shell started from it sees them. */
export function nofileLimits(): { soft: number; hard: number } {
  const out = execFileSync('sh', ['-c', 'ulimit -Sn; ulimit -Hn'], { encoding: 'utf8' }).trim().split('\n');
  const num = (s: string | undefined): number => (s === 'unlimited' ? 1 << 20 : Number(s) || 1024);
  return { soft: num(out[0]), hard: num(out[1]) };
}

/** Is something listening on 127.0.0.1:port? Asked without connecting, so the proxy sees no traffic. */
export function isListening(port: number): boolean {
  // `ss` asks the kernel through netlink for listeners only; /proc/net/tcp lists every socket, and after a
  // connection-rate run that is tens of thousands of TIME_WAIT lines.
  const r = spawnSync('ss', ['-Htln', `sport = :${port}`], { encoding: 'utf8' });
  if (!r.error) return r.stdout.trim().length > 0;
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  return fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').some((l) => {
    const c = l.trim().split(/\s+/);
    return c[1]?.endsWith(`:${hex}`) && c[3] === '0A';
  });
}

// Our ports live below the ephemeral range, so an outgoing connection can never take one between the
// moment we find it free and the moment a proxy binds it.
const [EPH_LO] = (() => {
  try {
    return fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  } catch {
    return [32768];
  }
})();
const PORT_LO = Math.max(1025, EPH_LO! - 12000);
const PORT_HI = EPH_LO! - 1;
let nextPort = PORT_LO + Math.floor(Math.random() * 4000);

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '127.0.0.1', port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

export async function freePort(): Promise<number> {
  for (let i = 0; i < PORT_HI - PORT_LO; i++) {
    if (nextPort > PORT_HI) nextPort = PORT_LO;
    const p = nextPort++;
    if (await bindable(p)) return p;
  }
  throw new Error('no free port below the ephemeral range');
}

/**
 * Runs `main` with the soft descriptor limit raised to the hard one: when it is lower, this script runs
 * again under a shell that raised it (Node cannot call setrlimit), and children inherit it. `marker` is
 * the environment variable that tells the second run it is the one.
 */
export async function withRaisedNofile(marker: string, main: () => Promise<number | void>): Promise<void> {
  const limits = nofileLimits();
  if (limits.soft < limits.hard && !process.env[marker]) {
    const { spawn } = await import('node:child_process');
    const child = spawn('sh', ['-c', 'ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"', process.execPath, ...process.argv.slice(1)], {
      stdio: 'inherit',
      env: { ...process.env, [marker]: '1' },
    });
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => child.kill(sig));
    child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
    return;
  }
  const code = await main();
  if (typeof code === 'number') process.exitCode = code;
}
