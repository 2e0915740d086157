// Who may steer through the HTTP face: login sessions (an HttpOnly cookie after the control token was
// given once), CSRF tokens for the page's forms, and the Host check against DNS rebinding.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';

export const SESSION_COOKIE = 'lb_session';
/** A login lasts a working day; a fresh one is a token away. */
export const SESSION_TTL_MS = 12 * 3600 * 1000;
/** More logins than an operator team holds; beyond it the oldest is forgotten (no memory growth by logins). */
export const MAX_SESSIONS = 256;

export class Sessions {
  // Per process and server: a restart logs everyone out and invalidates every form, which is what a
  // restart of the thing the forms steer should do.
  private readonly secret = randomBytes(32);
  private readonly expiry = new Map<string, number>();

  create(now = Date.now()): string {
    const id = randomBytes(24).toString('base64url');
    this.expiry.set(id, now + SESSION_TTL_MS);
    while (this.expiry.size > MAX_SESSIONS) this.expiry.delete(this.expiry.keys().next().value!);
    return id;
  }

  valid(id: string | undefined, now = Date.now()): boolean {
    if (!id) return false;
    const until = this.expiry.get(id);
    if (until === undefined) return false;
    if (until <= now) {
      this.expiry.delete(id);
      return false;
    }
    return true;
  }

  drop(id: string | undefined): void {
    if (id) this.expiry.delete(id);
  }

  /** The CSRF token of a session ("" for the one shared by clients that need no login). */
  csrf(sessionId: string): string {
    return createHmac('sha256', this.secret).update(`csrf\0${sessionId}`).digest('base64url');
  }

  csrfValid(sessionId: string, token: string | undefined): boolean {
    if (typeof token !== 'string') return false;
    const want = Buffer.from(this.csrf(sessionId));
    const got = Buffer.from(token);
    return got.length === want.length && timingSafeEqual(got, want);
  }
}

/** Cookie header → name/value pairs (first one wins, as browsers send the most specific first). */
export function parseCookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const name = part.slice(0, eq).trim();
    if (name && !out.has(name)) out.set(name, part.slice(eq + 1).trim());
  }
  return out;
}

/** `Authorization: Bearer TOKEN` → TOKEN, else null. */
export function bearerToken(header: string | undefined): string | null {
  const m = /^Bearer +(\S+) *$/i.exec(header ?? '');
  return m ? m[1]! : null;
}

function hostOnly(hostHeader: string): string {
  if (hostHeader.startsWith('[')) return hostHeader.slice(1, hostHeader.indexOf(']')).toLowerCase();
  const colon = hostHeader.lastIndexOf(':');
  return (colon >= 0 ? hostHeader.slice(0, colon) : hostHeader).toLowerCase();
}

function isLoopbackName(host: string): boolean {
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

/**
 * Whether a request's Host header may be answered. A face bound to loopback answers loopback names and
 * literals only: a web page on another site whose name an attacker re-points at 127.0.0.1 (DNS
 * rebinding) would otherwise be same-origin with the status page and could read its CSRF token.
 * A face bound elsewhere is reached by whatever name the operators' DNS gives it, so any Host goes.
 */
export function hostAllowed(boundHost: string, hostHeader: string | undefined): boolean {
  if (!isLoopbackName(boundHost)) return true;
  if (hostHeader === undefined || hostHeader === '') return true; // HTTP/1.0 clients (curl -0, probes)
  return isLoopbackName(hostOnly(hostHeader));
}

/** A browser's Origin (when it sends one) must name the host the request went to. */
export function originMatches(origin: string | undefined, hostHeader: string | undefined): boolean {
  if (origin === undefined) return true;
  try {
    return new URL(origin).host === (hostHeader ?? '').toLowerCase();
  } catch {
    return false;
  }
}
