// The rows of the bench: what the load generator talks to.
//
// - direct:     no proxy, the client talks to the backend: the limit of this machine.
// - lb:         lb with its default settings (access log on; its stderr goes to a file, as `2>file` would).
// - lb-nolog:   the same with `access_log = false`, to show what the access log costs.
// - lb-w1:      lb with one data-plane worker (`workers = 1`): the per-core cost, against node-pipe.
// - haproxy-1t: haproxy mode tcp, nbthread 1, the reference (only when haproxy is installed).
// - node-pipe:  the naive Node proxy the targets are stated against (naive-proxy.ts).
//
// Every proxy is its own process group, started fresh for each metric, and stopped by the PID recorded
// here (SIGTERM, then SIGKILL): never by name.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { isListening, processTree } from './procfs.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../..');
const LB_MAIN = path.join(REPO, 'src/cli/main.ts');
const NAIVE_PROXY = path.join(HERE, 'naive-proxy.ts');

/**
 * Which lb the bench ran: the commit of the working tree and the files of src/ changed since, so that
 * JSON from different runs can be matched to the code they measured.
 */
export function lbVersion(root = REPO): { commit: string; modified: string[] } {
  const git = (args: string[]): string => spawnSync('git', ['-C', root, ...args], { encoding: 'utf8' }).stdout ?? '';
  const commit = git(['rev-parse', '--short', 'HEAD']).trim() || 'unknown';
  // Porcelain lines are "XY path": the status takes the first three characters (leading space included).
  const modified = git(['status', '--porcelain', '--', 'src', 'package.json'])
    .split('\n')
    .filter((l) => l.length > 3)
    .map((l) => l.slice(3));
  return { commit, modified };
}

export interface StartContext {
  listenPort: number;
  backendPort: number;
  /** Connections the proxy must accept at once (the idle test). */
  maxConns: number;
  /** Where configs and logs of this run go. */
  dir: string;
}

export interface Target {
  name: string;
  desc: string;
  direct?: boolean;
  /** Starts the proxy and resolves once it listens; rejects with its stderr if it dies or never listens. */
  start?(ctx: StartContext): Promise<RunningProxy>;
}

/** What a proxy's log said during one run, for the report's errors section. */
export interface LogSummary {
  /** Log lines by "level event" (text format: `TIME LEVEL EVENT key=value...`), access-log lines included. */
  events: Record<string, number>;
  /** Lines that are not log lines (stack traces, unexpected errors); the first few. */
  other: string[];
}

export class RunningProxy {
  readonly name: string;
  readonly child: ChildProcess;
  readonly stderrFile: string;
  exitCode: number | null = null;
  exitSignal: NodeJS.Signals | null = null;
  exited = false;
  private readonly exitPromise: Promise<void>;

  constructor(name: string, child: ChildProcess, stderrFile: string) {
    this.name = name;
    this.child = child;
    this.stderrFile = stderrFile;
    this.exitPromise = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exited = true;
        this.exitCode = code;
        this.exitSignal = signal;
        resolve();
      });
      child.on('error', () => {
        this.exited = true;
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  /** The proxy and any workers it forked. */
  pids(): number[] {
    return this.exited ? [] : processTree(this.pid);
  }

  stderrTail(n = 600): string {
    try {
      const s = fs.readFileSync(this.stderrFile, 'utf8').trim();
      return s.length > n ? '…' + s.slice(-n) : s;
    } catch {
      return '';
    }
  }

  /** Why it failed: a stack trace's message is at its head, a log's last words at its tail. */
  stderrGist(): string {
    try {
      const s = fs.readFileSync(this.stderrFile, 'utf8').trim();
      return s.length > 700 ? `${s.slice(0, 350)} … ${s.slice(-300)}` : s;
    } catch {
      return '';
    }
  }

  async waitReady(ready: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!ready()) {
      if (this.exited) throw new Error(`${this.name} exited (code ${this.exitCode}, signal ${this.exitSignal}) before listening: ${this.stderrGist()}`);
      if (Date.now() > deadline) throw new Error(`${this.name} not listening after ${timeoutMs} ms: ${this.stderrTail()}`);
      await sleep(20);
    }
  }

  /** SIGTERM to the process group, SIGKILL after graceMs. Returns how it went, for the errors section. */
  async stop(graceMs = 3000): Promise<{ ms: number; clean: boolean; code: number | null; signal: string | null }> {
    const t0 = Date.now();
    if (!this.exited) {
      signalGroup(this.pid, 'SIGTERM');
      await Promise.race([this.exitPromise, sleep(graceMs)]);
    }
    const clean = this.exited;
    signalGroup(this.pid, 'SIGKILL'); // whatever is left of the group
    if (!this.exited) await Promise.race([this.exitPromise, sleep(1000)]);
    return { ms: Date.now() - t0, clean, code: this.exitCode, signal: this.exitSignal };
  }

  kill(): void {
    signalGroup(this.pid, 'SIGKILL');
  }

  /** Counts log lines by level and event; lb's text format is `ISO-TIME LEVEL EVENT key=value...`. */
  logSummary(): LogSummary {
    const events: Record<string, number> = {};
    const other: string[] = [];
    let text = '';
    try {
      text = fs.readFileSync(this.stderrFile, 'utf8');
    } catch {
      /* no log */
    }
    for (const line of text.split('\n')) {
      if (!line) continue;
      const m = /^\d{4}-\d\d-\d\dT\S+ (info|warn|error) (\S+)/.exec(line);
      if (m) events[`${m[1]} ${m[2]}`] = (events[`${m[1]} ${m[2]}`] ?? 0) + 1;
      else if (!/^lb \S+ (listening on|stopped)/.test(line) && other.length < 5) other.push(line.slice(0, 300));
    }
    return { events, other };
  }
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    /* already gone */
  }
}

function startProcess(name: string, cmd: string, args: string[], dir: string): RunningProxy {
  const stderrFile = path.join(dir, `${name}.stderr`);
  const errFd = fs.openSync(stderrFile, 'w');
  // Own process group (detached) so stop() reaches workers too; stdout is not read by anyone.
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'ignore', errFd] });
  fs.closeSync(errFd);
  return new RunningProxy(name, child, stderrFile);
}

// ------------------------------------------------------------------------------------------------- lb

/** The config the bench feeds lb: one listener to one backend, everything else at its default. */
export function lbConfig(listenPort: number, backendPort: number, accessLog: boolean, workers?: number): string {
  return [
    '# Generated by bench/: one listener, one backend, defaults except where said.',
    '[global]',
    '# a bench run stops lb right after its last figure: no graceful drain to wait for',
    'drain_timeout = "0"',
    ...(accessLog ? [] : ['access_log = false']),
    ...(workers ? [`workers = ${workers}`] : []),
    '',
    '[listeners.bench]',
    `listen = "127.0.0.1:${listenPort}"`,
    '[[listeners.bench.groups]]',
    `backends = ["127.0.0.1:${backendPort}"]`,
    '',
  ].join('\n');
}

/**
 * Starts lb on `ctx`'s ports; `nodeFlags` go to Node (the profiler's --cpu-prof, for one), `main` is the
 * entry point (another checkout's, to compare a change with the current tree).
 */
export async function startLb(
  name: string,
  ctx: StartContext,
  accessLog: boolean,
  nodeFlags: string[] = [],
  main = LB_MAIN,
  workers?: number,
): Promise<RunningProxy> {
  const cfg = path.join(ctx.dir, `${name}.toml`);
  fs.writeFileSync(cfg, lbConfig(ctx.listenPort, ctx.backendPort, accessLog, workers));
  const p = startProcess(name, process.execPath, [...nodeFlags, main, 'run', cfg], ctx.dir);
  // lb prints `lb VERSION listening on NAME=ADDR (pid N)` once bound.
  await p.waitReady(() => /listening on/.test(p.stderrTail(4000)), 15_000);
  return p;
}

function lbTarget(name: string, accessLog: boolean, main = LB_MAIN, workers?: number): Target {
  const settings = workers ? `workers = ${workers}` : 'default settings (workers = auto)';
  return {
    name,
    desc: `lb (${path.relative(process.cwd(), main) || main}) on Node ${process.version}, ${settings}${accessLog ? ' (access log on, stderr to a file)' : ', access_log = false'}, drain_timeout 0`,
    start: (ctx) => startLb(name, ctx, accessLog, [], main, workers),
  };
}

/** Another lb to compare with this one (`--compare NAME=PATH/src/cli/main.ts`), default settings. */
export function comparedLb(spec: string): Target {
  const i = spec.indexOf('=');
  const name = spec.slice(0, i);
  const main = path.resolve(spec.slice(i + 1));
  if (i <= 0 || !/^[A-Za-z0-9_.-]+$/.test(name) || (ALL_TARGETS as readonly string[]).includes(name)) {
    throw new Error(`--compare wants NAME=PATH with a new name (letters, digits, _ . -), got ${spec}`);
  }
  if (!fs.existsSync(main)) throw new Error(`--compare ${name}: ${main} not found`);
  return lbTarget(name, true, main);
}

// -------------------------------------------------------------------------------------------- haproxy

export function findHaproxy(): string | null {
  for (const p of ['/usr/sbin/haproxy', '/usr/local/sbin/haproxy', '/usr/bin/haproxy', '/usr/local/bin/haproxy']) {
    if (fs.existsSync(p)) return p;
  }
  return null;
}

function haproxyTarget(bin: string, nofile: number): Target {
  const vv = spawnSync(bin, ['-vv'], { encoding: 'utf8' }).stdout ?? '';
  const version = /HA-?Proxy version (\S+)/i.exec(vv)?.[1] ?? '?';
  const splice = /\+LINUX_SPLICE/.test(vv);
  return {
    name: 'haproxy-1t',
    desc:
      `haproxy ${version}, mode tcp, nbthread 1` +
      (splice ? ', kernel splice forced (option splice-request/-response), as in the shared anchors' : ', no splice'),
    async start(ctx) {
      // Splice needs a pipe (2 fds) per spliced direction; haproxy sizes its fds as 2*maxconn + 2*maxpipes,
      // which must stay under ulimit -n for the idle test. A few dozen pipes serve the busy tests.
      const maxpipes = Math.max(8, Math.min(Math.floor(ctx.maxConns / 4), Math.floor((nofile - 2 * ctx.maxConns - 64) / 2)));
      const conf = [
        'global',
        '  nbthread 1',
        `  maxconn ${ctx.maxConns}`,
        ...(splice ? [`  maxpipes ${maxpipes}`] : []),
        'defaults',
        '  mode tcp',
        `  maxconn ${ctx.maxConns}`,
        '  timeout connect 5s',
        '  timeout client 300s',
        '  timeout server 300s',
        ...(splice ? ['  option splice-request', '  option splice-response'] : []),
        'frontend fe',
        `  bind 127.0.0.1:${ctx.listenPort}`,
        '  default_backend be',
        'backend be',
        `  server s1 127.0.0.1:${ctx.backendPort}`,
        '',
      ].join('\n');
      const file = path.join(ctx.dir, 'haproxy.cfg');
      fs.writeFileSync(file, conf);
      const p = startProcess('haproxy-1t', bin, ['-db', '-f', file], ctx.dir);
      await p.waitReady(() => isListening(ctx.listenPort), 15_000);
      return p;
    },
  };
}

// ------------------------------------------------------------------------------------------ node-pipe

/** Starts the naive proxy; `nodeFlags` go to Node (the profiler's, for one). */
export async function startNodePipe(ctx: StartContext, nodeFlags: string[] = []): Promise<RunningProxy> {
  const p = startProcess('node-pipe', process.execPath, [...nodeFlags, NAIVE_PROXY, String(ctx.listenPort), String(ctx.backendPort)], ctx.dir);
  await p.waitReady(() => isListening(ctx.listenPort), 15_000);
  return p;
}

const nodePipeTarget: Target = {
  name: 'node-pipe',
  desc: `naive Node proxy (bench/lib/naive-proxy.ts: net + pipe(), the issue's reference) on Node ${process.version}`,
  start: (ctx) => startNodePipe(ctx),
};

// ------------------------------------------------------------------------------------------- registry

export const ALL_TARGETS = ['direct', 'lb', 'lb-w1', 'lb-nolog', 'haproxy-1t', 'node-pipe'] as const;

/** The targets asked for; haproxy-1t is dropped (with a note) when haproxy is not installed. */
export function makeTargets(names: readonly string[], nofile: number, notes: string[]): Target[] {
  const out: Target[] = [];
  for (const name of names) {
    switch (name) {
      case 'direct':
        out.push({ name, direct: true, desc: 'no proxy: the client talks straight to the backend (the limit of this machine)' });
        break;
      case 'lb':
        out.push(lbTarget(name, true));
        break;
      case 'lb-w1':
        out.push(lbTarget(name, true, LB_MAIN, 1));
        break;
      case 'lb-nolog':
        out.push(lbTarget(name, false));
        break;
      case 'haproxy-1t': {
        const bin = findHaproxy();
        if (bin) out.push(haproxyTarget(bin, nofile));
        else notes.push('haproxy is not installed: no haproxy-1t reference row (apt-get install haproxy)');
        break;
      }
      case 'node-pipe':
        out.push(nodePipeTarget);
        break;
      default:
        throw new Error(`unknown target ${name} (known: ${ALL_TARGETS.join(', ')})`);
    }
  }
  return out;
}
