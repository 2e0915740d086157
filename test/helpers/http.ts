// The HTTP face for tests: an in-process lb (a Runtime) with an HttpServer wired around it as the main
// thread will wire it, and a bounded fetch. `cleanup()` from lb.ts closes both (the server is tracked).

import { httpConfigOf, HttpServer, type HttpLimits } from '../../src/http/server.ts';
import { httpTargetOf } from '../../src/http/target.ts';
import { track } from './backends.ts';
import { startLb, type InProcessLb } from './lb.ts';

export interface HttpLb {
  lb: InProcessLb;
  http: HttpServer;
  /** http://127.0.0.1:PORT */
  base: string;
  port: number;
  /** A stop has begun (/healthz says 503). */
  draining: boolean;
}

/** Starts lb from `doc` (its `[control]` must set `http`) and the HTTP face on the address it names. */
export async function startHttpLb(doc: Record<string, unknown>, limits: Partial<HttpLimits> = {}): Promise<HttpLb> {
  const lb = await startLb(doc);
  const config = httpConfigOf(lb.rt.table.control);
  if (!config) throw new Error('the doc has no control.http');
  const h: Partial<HttpLb> & { draining: boolean } = { lb, draining: false };
  const http = new HttpServer(config, httpTargetOf(lb.rt, () => h.draining), lb.rt.log, limits);
  await http.start();
  track({ close: () => http.close() });
  const port = http.address()!.port;
  return Object.assign(h, { http, port, base: `http://127.0.0.1:${port}` }) as HttpLb;
}

export interface Got {
  status: number;
  headers: Headers;
  text: string;
}

/** fetch with a deadline; the body read in full. */
export async function get(url: string, init: RequestInit & { ms?: number } = {}): Promise<Got> {
  const { ms = 5000, ...rest } = init;
  const r = await fetch(url, { redirect: 'manual', ...rest, signal: AbortSignal.timeout(ms) });
  return { status: r.status, headers: r.headers, text: await r.text() };
}

/** POSTs a urlencoded form. */
export function post(url: string, form: Record<string, string | number>, headers: Record<string, string> = {}): Promise<Got> {
  const body = new URLSearchParams(Object.entries(form).map(([k, v]): [string, string] => [k, String(v)]));
  return get(url, { method: 'POST', body, headers: { Accept: 'text/plain', ...headers } });
}

/** Logs in with the control token; returns the session cookie ("lb_session=..."). */
export async function login(base: string, token: string): Promise<string> {
  const r = await post(`${base}/login`, { token });
  if (r.status !== 303) throw new Error(`login failed: ${r.status} ${r.text}`);
  return r.headers.get('set-cookie')!.split(';', 1)[0]!;
}

/** The CSRF token in a rendered page, or null when the page has no forms. */
export function csrfOf(html: string): string | null {
  return /name="csrf" value="([^"]+)"/.exec(html)?.[1] ?? null;
}

/** Prometheus text → { 'name{labels}': value } (labels as written, in prom-client's order). */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\S+?(?:\{.*\})?) (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    out.set(m[1]!, Number(m[2]));
  }
  return out;
}

/** The value of `name` with exactly these labels (in any order), or undefined. */
export function metric(samples: Map<string, number>, name: string, labels: Record<string, string | number> = {}): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).sort().join(',');
  for (const [key, v] of samples) {
    const m = /^([^{]+)(?:\{(.*)\})?$/.exec(key)!;
    if (m[1] !== name) continue;
    const have = (m[2] ?? '').split(/,(?=[a-z_]+=")/).filter(Boolean).sort().join(',');
    if (have === want) return v;
  }
  return undefined;
}
