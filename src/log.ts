// Log lines on stderr: one line per event, text (`TIME LEVEL event key=value ...`) or JSON.
//
// stderr because that is what systemd's journal and `2>` capture; the access log shares the stream so
// one reader sees connections and state changes in order. Writing to stderr is synchronous in Node (for
// files and pipes), and each write to a pipe also wakes its reader: at thousands of connections a second
// a write per line measurably slowed the connection rate (a third of lb's cost per connection on a
// 2-core machine). So lines are collected and written together every FLUSH_MS (or when 64 KiB have
// gathered), like nginx's `access_log ... buffer= flush=`; whatever is pending is written before the
// process exits.

import type { LogFormat, LogLevel } from './config/table.ts';

export type Level = LogLevel;
export type Fields = Record<string, string | number | boolean | null | undefined>;

const RANK: Readonly<Record<Level, number>> = { debug: 0, info: 1, warn: 2, error: 3 };

/** True when an event at `level` is written by a logger set to `threshold`. */
export function levelEnabled(threshold: Level, level: Level): boolean {
  return RANK[level] >= RANK[threshold];
}

export interface Logger {
  format: LogFormat;
  /** Least severe event written (`global.log_level`); a reload may change it. Access lines ignore it. */
  level: Level;
  log(level: Level, event: string, fields?: Fields): void;
  /** The access-log line of a finished connection: the one log call on every connection's path. */
  access(rec: AccessRecord): void;
  /** Lines formatted elsewhere (a data-plane worker's batch: whole lines, each ending in a newline). */
  lines(text: string): void;
}

export interface AccessRecord {
  id: number;
  listener: string;
  client: string;
  /** The backend's name (its configured `name`, else `host:port` as configured), or '-'. */
  backend: string;
  /** The address it was connected to (`ip:port`, IPv6 in brackets), or '-'. */
  backend_addr: string;
  group: number | string;
  sent: number;
  rcvd: number;
  ms: number;
  queued_ms: number | undefined;
  end: string;
}

const quoted = new Map<string, string>();
/** A value as text-log field: bare when safe, else JSON-quoted. Config strings repeat: cached. */
function textValue(s: string): string {
  let v = quoted.get(s);
  if (v === undefined) {
    v = s !== '' && SAFE.test(s) ? s : JSON.stringify(s);
    if (quoted.size < 10_000) quoted.set(s, v);
  }
  return v;
}

/** The access line in text, as `formatText` would write it, without a fields object to walk. */
export function formatAccessText(time: string, r: AccessRecord): string {
  const queued = r.queued_ms === undefined ? '' : ` queued_ms=${r.queued_ms}`;
  return `${time} info conn id=${r.id} listener=${textValue(r.listener)} client=${r.client} backend=${textValue(r.backend)} backend_addr=${r.backend_addr} group=${r.group} sent=${r.sent} rcvd=${r.rcvd} ms=${r.ms}${queued} end=${r.end}`;
}

const SAFE = /^[A-Za-z0-9_.:/@\[\]+-]*$/;

export function formatText(time: string, level: Level, event: string, fields: Fields = {}): string {
  let line = `${time} ${level} ${event}`;
  for (const key in fields) {
    const v = fields[key];
    if (v === undefined) continue;
    const s = String(v);
    line += ` ${key}=${s !== '' && SAFE.test(s) ? s : JSON.stringify(s)}`;
  }
  return line;
}

export function formatJson(time: string, level: Level, event: string, fields: Fields = {}): string {
  return JSON.stringify({ time, level, event, ...fields });
}

const FLUSH_BYTES = 64 * 1024;
/** Longest a line waits before it is written: short for a person tailing the log, long for the CPU. */
export const FLUSH_MS = 50;

/** Collects lines and hands them to `write` in batches; `flush()` writes what is pending now. */
export class BatchedWriter {
  private pending = '';
  private scheduled = false;
  private readonly write: (text: string) => void;

  constructor(write: (text: string) => void) {
    this.write = write;
  }

  line(text: string): void {
    this.chunk(text + '\n');
  }

  /** Whole lines, each already ending in a newline (a worker's batch). */
  chunk(text: string): void {
    this.pending += text;
    if (this.pending.length >= FLUSH_BYTES) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      setTimeout(() => this.flush(), FLUSH_MS).unref(); // exit flushes the rest; the timer keeps nothing alive
    }
  }

  flush(): void {
    this.scheduled = false;
    if (this.pending === '') return;
    const text = this.pending;
    this.pending = '';
    this.write(text);
  }
}

/** The time as an ISO string, formatted once per millisecond however many lines share it. */
let lastMs = 0;
let lastIso = '';
function isoNow(): string {
  const ms = Date.now();
  if (ms !== lastMs) {
    lastMs = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

let stderrWriter: BatchedWriter | null = null;
function stderrBatch(): BatchedWriter {
  if (!stderrWriter) {
    const writer = new BatchedWriter((text) => void process.stderr.write(text));
    process.on('exit', () => writer.flush());
    stderrWriter = writer;
  }
  return stderrWriter;
}

/** A logger writing to `write` line by line (tests), or to stderr in batches (the default). */
export function createLogger(format: LogFormat, write?: (line: string) => void, level: Level = 'info'): Logger {
  const sink = write ?? ((line: string) => stderrBatch().line(line));
  return {
    format,
    level,
    log(lvl, event, fields) {
      if (RANK[lvl] < RANK[this.level]) return;
      sink((this.format === 'json' ? formatJson : formatText)(isoNow(), lvl, event, fields));
    },
    access(rec) {
      const time = isoNow();
      sink(this.format === 'json' ? formatJson(time, 'info', 'conn', rec as unknown as Fields) : formatAccessText(time, rec));
    },
    lines(text) {
      if (write === undefined) {
        // A worker's batch goes out as it came (no split and join per line), at once: it already waited.
        const b = stderrBatch();
        b.chunk(text);
        b.flush();
        return;
      }
      let start = 0;
      for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', start)) {
        sink(text.slice(start, nl));
        start = nl + 1;
      }
    },
  };
}

/**
 * The log line of one control-port command: reads that succeed at debug (monitoring polls every few seconds
 * and would bury everything else), changes at info, failures at warn with the reason the client was given
 * (`command=save ok=false error="..." code=LB_...`). `readOnly` is the command's own classification.
 */
export function controlCommandEvent(
  peer: string,
  command: string,
  reply: { text: string; error?: string | undefined },
  readOnly: boolean,
): { level: Level; event: 'control'; fields: Fields } {
  if (reply.error === undefined) return { level: readOnly ? 'debug' : 'info', event: 'control', fields: { peer, command, ok: true } };
  const why = (reply.text.split('\n')[0] ?? '').replace(/^error:\s*/, '').slice(0, 300);
  return { level: 'warn', event: 'control', fields: { peer, command, ok: false, error: why, code: reply.error } };
}

/** Writes pending log lines now (before a message that must come after them, or before exiting). */
export function flushLog(): void {
  stderrWriter?.flush();
}
