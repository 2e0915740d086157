// Access levels of the control plane (Telnet/TCP, the Unix socket, the HTTP face), as HAProxy's
// `stats socket ... level`: `read` may look, `operator` may also steer traffic (enable, disable, drain,
// maxc, reset), `admin` may also change the pool and the process (create, assign, delete, policy, save,
// kill, reload). One ordering, used by every endpoint, so a level means the same thing everywhere.

import { timingSafeEqual, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

export const LEVELS = ['read', 'operator', 'admin'] as const;
export type Level = (typeof LEVELS)[number];

/** True when a session at `have` may run a command that needs `need`. */
export function levelAllows(have: Level, need: Level): boolean {
  return LEVELS.indexOf(have) >= LEVELS.indexOf(need);
}

/**
 * Reads a control token: the file's first line, surrounding white space removed. Throws with the path
 * and the reason when the file is missing, unreadable or empty (an empty token would admit anyone).
 */
export function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`token_file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const token = (text.split(/\r?\n/, 1)[0] ?? '').trim();
  if (token === '') throw new Error(`token_file ${file}: the file is empty`);
  return token;
}

/**
 * Compares a presented token with the configured one in constant time: both are hashed first, so neither
 * the content nor the length of the real token leaks through timing.
 */
export function tokenMatches(given: string, token: string): boolean {
  const a = createHash('sha256').update(given, 'utf8').digest();
  const b = createHash('sha256').update(token, 'utf8').digest();
  return timingSafeEqual(a, b);
}

/** The higher of two levels. */
export function maxLevel(a: Level, b: Level): Level {
  return levelAllows(a, b) ? a : b;
}

/** What an endpoint's configuration grants: see `sessionLevel`. */
export interface LevelConfig {
  /** The TCP port's level, reached with `auth TOKEN` (a TCP session starts at `read`). */
  readonly level: Level;
  /** The Unix socket's level, granted at connect (file permissions guard the socket). */
  readonly socketLevel: Level;
  readonly tokenFile: string | null;
}

/**
 * The level of a session: a Unix-socket session starts at `socket_level`, a TCP session at `read`; a
 * session that presented the token is raised to `level`. Without a token file nothing raises a TCP
 * session, whatever `level` says: above read, TCP needs a secret, not just an address in `allow`.
 */
export function sessionLevel(c: LevelConfig, endpoint: 'tcp' | 'unix', authenticated: boolean): Level {
  const base: Level = endpoint === 'unix' ? c.socketLevel : 'read';
  return authenticated && c.tokenFile !== null ? maxLevel(base, c.level) : base;
}

/** A session that has failed this many times in a row is closed. */
export const AUTH_MAX_FAILURES = 3;
/** The wait before the answer to a failed `auth`, per failure of the session so far. */
export const AUTH_FAIL_DELAY_MS = 1000;
/** Failures anywhere on the port within this window lengthen every session's wait... */
export const AUTH_WINDOW_MS = 60_000;
/** ...by this much each, up to AUTH_MAX_DELAY_MS: many sessions in parallel guess no faster than one. */
export const AUTH_GLOBAL_STEP_MS = 200;
export const AUTH_MAX_DELAY_MS = 10_000;

/**
 * Slows down token guessing (pure: the caller passes the clock). The delay after a failure grows with
 * the session's own failures and with the port's recent ones, so opening many sessions does not help.
 */
export class AuthThrottle {
  private readonly recent: number[] = [];
  private head = 0;

  /** Records a failure at `now`; returns how long to wait before answering it. */
  failed(sessionFailures: number, now: number): number {
    while (this.head < this.recent.length && this.recent[this.head]! <= now - AUTH_WINDOW_MS) this.head++;
    if (this.head > 1024) {
      this.recent.splice(0, this.head);
      this.head = 0;
    }
    // The window's count is all that matters: cap what is kept so a flood of failures cannot grow it.
    if (this.recent.length - this.head < 1000) this.recent.push(now);
    const portWide = (this.recent.length - this.head - 1) * AUTH_GLOBAL_STEP_MS;
    return Math.min(AUTH_MAX_DELAY_MS, sessionFailures * AUTH_FAIL_DELAY_MS + portWide);
  }
}
