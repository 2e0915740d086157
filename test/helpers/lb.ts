// Starting `lb` for the data-path tests: in-process (a Runtime with captured log lines) or as the real CLI
// process (the port read back from its start-up line). Every wait is bounded; `cleanup()` in an afterEach
// stops every lb and then every backend/client the helpers opened.

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { buildTable } from '../../src/config/pipeline.ts';
import type { RoutingTable } from '../../src/config/table.ts';
import type { TableCounts } from '../../src/config/limits.ts';
import { createLogger } from '../../src/log.ts';
import { Runtime, type ListenerView } from '../../src/runtime.ts';
import { closeAllBackends, within } from './backends.ts';

export const ROOT = path.resolve(import.meta.dirname, '../..');

// ---------------------------------------------------------------------------------------------------
// Log lines

export interface LogLine {
  readonly raw: string;
  readonly level: string;
  readonly event: string;
  /** Field values as strings (text format values unquoted; JSON values stringified). */
  readonly fields: Readonly<Record<string, string>>;
}

const TEXT_LINE = /^(\d{4}-\d\d-\d\dT\S+Z) (debug|info|warn|error) (\S+)(.*)$/;
const FIELD = / ([A-Za-z0-9_]+)=("(?:[^"\\]|\\.)*"|\S*)/g;

/** Parses one log line (`TIME LEVEL event key=value...` or JSON); null for anything else. */
export function parseLogLine(raw: string): LogLine | null {
  if (raw.startsWith('{')) {
    try {
      const o = JSON.parse(raw) as Record<string, unknown>;
      if (typeof o.event !== 'string' || typeof o.level !== 'string') return null;
      const fields: Record<string, string> = {};
      for (const [k, v] of Object.entries(o)) if (k !== 'time' && k !== 'level' && k !== 'event') fields[k] = String(v);
      return { raw, level: o.level, event: o.event, fields };
    } catch {
      return null;
    }
  }
  const m = TEXT_LINE.exec(raw);
  if (!m) return null;
  const fields: Record<string, string> = {};
  for (const f of m[4]!.matchAll(FIELD)) fields[f[1]!] = f[2]!.startsWith('"') ? (JSON.parse(f[2]!) as string) : f[2]!;
  return { raw, level: m[2]!, event: m[3]!, fields };
}

export type LogMatch = string | { event: string; [field: string]: string | number } | ((l: LogLine) => boolean);

function matcher(m: LogMatch): (l: LogLine) => boolean {
  if (typeof m === 'function') return m;
  if (typeof m === 'string') return (l) => l.event === m;
  return (l) => Object.entries(m).every(([k, v]) => (k === 'event' ? l.event === v : l.fields[k] === String(v)));
}

function describe(m: LogMatch): string {
  return typeof m === 'function' ? 'a matching log line' : `log line ${JSON.stringify(m)}`;
}

/** Every line written to the log (or to a process's stderr), with waits for the one a test expects. */
export class LogCapture {
  /** Every raw line, log or not (start-up line, diagnostics). */
  readonly raw: string[] = [];
  /** The lines that parse as log lines. */
  readonly lines: LogLine[] = [];
  private readonly waiters = new Set<() => void>();

  push(raw: string): void {
    this.raw.push(raw);
    const l = parseLogLine(raw);
    if (l) this.lines.push(l);
    for (const w of [...this.waiters]) w();
  }

  all(m: LogMatch): LogLine[] {
    return this.lines.filter(matcher(m));
  }

  /** Index to pass as `from` so only lines logged after now count. */
  mark(): number {
    return this.lines.length;
  }

  /** Resolves with the `count`-th line (from index `from`) matching `m`; rejects after `ms`. */
  waitFor(m: LogMatch, opts: { ms?: number; from?: number; count?: number } = {}): Promise<LogLine> {
    const { ms = 3000, from = 0, count = 1 } = opts;
    const pred = matcher(m);
    let check = (): void => undefined;
    const found = new Promise<LogLine>((resolve) => {
      check = (): void => {
        const hits = this.lines.slice(from).filter(pred);
        if (hits.length >= count) {
          this.waiters.delete(check);
          resolve(hits[count - 1]!);
        }
      };
      this.waiters.add(check);
      check();
    });
    return within(found, ms, `${describe(m)}; log so far:\n${this.raw.join('\n')}`).finally(() => this.waiters.delete(check));
  }

  /** Resolves with the first raw line (log or not) matching `re`. */
  waitForRaw(re: RegExp, ms = 5000): Promise<string> {
    let check = (): void => undefined;
    const found = new Promise<string>((resolve) => {
      check = (): void => {
        const hit = this.raw.find((l) => re.test(l));
        if (hit !== undefined) {
          this.waiters.delete(check);
          resolve(hit);
        }
      };
      this.waiters.add(check);
      check();
    });
    return within(found, ms, `a line matching ${re}; output so far:\n${this.raw.join('\n')}`).finally(() => this.waiters.delete(check));
  }

  text(): string {
    return this.raw.join('\n');
  }
}

// ---------------------------------------------------------------------------------------------------
// In-process

export async function tableFrom(doc: unknown, resolve: 'skip' | 'error' = 'skip'): Promise<RoutingTable> {
  const r = await buildTable(doc, { resolve });
  if (!r.ok) throw new Error(`config rejected: ${JSON.stringify(r.diagnostics, null, 2)}`);
  return r.table;
}

export interface InProcessLb {
  readonly rt: Runtime;
  readonly logs: LogCapture;
  port(listener?: string): number;
  listener(name?: string): ListenerView;
  /** Swaps in the table built from `doc`. */
  apply(doc: unknown): Promise<void>;
  /** Stops with the given drain time (default 0: closes whatever is open). */
  stop(drainMs?: number): Promise<void>;
}

const running = new Set<{ stop(): Promise<void> }>();

/** Starts a Runtime from a config document (names not resolved: use IP literals), logs captured. */
/** `resolve: 'error'` resolves host names as `lb run` does (the default skips it: use IP literals). */
export async function startLb(
  doc: unknown,
  opts: { resolve?: 'skip' | 'error'; lookup?: (name: string) => Promise<string | Error>; tableLimits?: TableCounts } = {},
): Promise<InProcessLb> {
  const table = await tableFrom(doc, opts.resolve);
  const logs = new LogCapture();
  const rt = new Runtime(table, { log: createLogger(table.global.logFormat, (line) => logs.push(line)), lookup: opts.lookup, tableLimits: opts.tableLimits });
  let stopping: Promise<void> | null = null;
  const lb: InProcessLb = {
    rt,
    logs,
    port: (name = 'web') => {
      const p = rt.port(name);
      if (!p) throw new Error(`no bound listener "${name}"`);
      return p;
    },
    listener: (name = 'web') => {
      const l = rt.listeners.get(name);
      if (!l) throw new Error(`no listener "${name}"`);
      return l;
    },
    apply: async (next) => rt.apply(await tableFrom(next)),
    stop: (drainMs = 0) => {
      running.delete(lb);
      return (stopping ??= within(rt.shutdown(drainMs), 5000, 'the in-process lb to shut down'));
    },
  };
  running.add(lb);
  await within(rt.start(), 5000, 'the in-process lb to start');
  return lb;
}

/** A minimal doc: one listener "web" on 127.0.0.1:0 with the given groups (access log on). */
export function webDoc(
  groups: ({ policy?: string; backends: (string | Record<string, unknown>)[] } & Record<string, unknown>)[],
  listener: Record<string, unknown> = {},
  global: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    global: { access_log: true, ...global },
    listeners: { web: { listen: '127.0.0.1:0', connect_timeout: '1s', ...listener, groups } },
  };
}

export const at = (port: number): string => `127.0.0.1:${port}`;

// ---------------------------------------------------------------------------------------------------
// The CLI as a child process

export interface LbProcess {
  readonly proc: ChildProcess;
  /** Listener name → bound port, from the start-up line. */
  readonly ports: Readonly<Record<string, number>>;
  /** stderr, line by line (start-up line, log lines, diagnostics). */
  readonly logs: LogCapture;
  stdout(): string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Kills the process if it is still running and waits for it. */
  stop(): Promise<void>;
}

/** `lb 1.0.0 listening on web=127.0.0.1:4000 api=[::]:4001; 2 workers[; control ...] (pid N)` */
const STARTED = /^lb \S+ listening on (.*?)(?:; \d+ workers?)?(?:; control .*)? \(pid (\d+)\)$/;

/** Spawns `node src/cli/main.ts ...args` and resolves once it prints its start-up line. */
export async function spawnLb(
  args: readonly string[],
  opts: { startMs?: number; onReady?: (proc: ChildProcess) => void; /** e.g. ['prlimit', '--nofile=80:80'] */ wrap?: string[] } = {},
): Promise<LbProcess> {
  const argv = [...(opts.wrap ?? []), process.execPath, 'src/cli/main.ts', ...args];
  const proc = spawn(argv[0]!, argv.slice(1), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs = new LogCapture();
  let out = '';
  let errBuf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  proc.stderr!.on('data', (d: Buffer) => {
    errBuf += d.toString();
    let nl: number;
    while ((nl = errBuf.indexOf('\n')) >= 0) {
      const line = errBuf.slice(0, nl);
      // Synchronously, in the very callback that delivers the line (for tests of what lb does at once).
      if (opts.onReady && STARTED.test(line)) opts.onReady(proc);
      logs.push(line);
      errBuf = errBuf.slice(nl + 1);
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => {
      if (errBuf) logs.push(errBuf);
      errBuf = '';
      resolve({ code, signal });
    }),
  );
  const child: LbProcess & { ports: Record<string, number> } = {
    proc,
    ports: {},
    logs,
    stdout: () => out,
    exited,
    stop: async () => {
      running.delete(child);
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await within(exited, 5000, 'the lb process to exit after SIGKILL');
      }
    },
  };
  running.add(child);
  const line = await within(
    Promise.race([
      logs.waitForRaw(STARTED, opts.startMs ?? 10_000),
      exited.then(({ code }) => {
        throw new Error(`lb exited (${code}) before listening:\n${logs.text()}`);
      }),
    ]),
    (opts.startMs ?? 10_000) + 100,
    'lb to start',
  );
  for (const token of STARTED.exec(line)![1]!.split(' ')) {
    const m = /^(.+?)=(.+):(\d+)$/.exec(token);
    if (m) child.ports[m[1]!] = Number(m[3]);
  }
  return child;
}

/** Stops every lb (in-process: drain 0; processes: SIGKILL) and then closes every backend and client. */
export async function cleanup(): Promise<void> {
  const all = [...running];
  running.clear();
  await Promise.all(all.map((r) => r.stop().catch(() => undefined)));
  await closeAllBackends();
}
