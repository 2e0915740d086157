// Log lines on stderr: one line per event, text (`TIME LEVEL event key=value ...`) or JSON.
//
// stderr because that is what systemd's journal and `2>` capture; the access log shares the stream so
// one reader sees connections and state changes in order.

import type { LogFormat } from './config/table.ts';

export type Level = 'info' | 'warn' | 'error';
export type Fields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  format: LogFormat;
  log(level: Level, event: string, fields?: Fields): void;
}

const SAFE = /^[A-Za-z0-9_.:/@\[\]+-]*$/;

export function formatText(time: Date, level: Level, event: string, fields: Fields = {}): string {
  let line = `${time.toISOString()} ${level} ${event}`;
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    const s = String(v);
    line += ` ${k}=${s !== '' && SAFE.test(s) ? s : JSON.stringify(s)}`;
  }
  return line;
}

export function formatJson(time: Date, level: Level, event: string, fields: Fields = {}): string {
  return JSON.stringify({ time: time.toISOString(), level, event, ...fields });
}

export function createLogger(format: LogFormat, write: (line: string) => void = (l) => process.stderr.write(l + '\n')): Logger {
  return {
    format,
    log(level, event, fields) {
      const fmt = this.format === 'json' ? formatJson : formatText;
      write(fmt(new Date(), level, event, fields));
    },
  };
}
