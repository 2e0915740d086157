// The HTTP face of the control plane: the live status page, /metrics for Prometheus, the `show json` and
// `show stat` documents, and /healthz for orchestrators. It runs on the main thread beside the Telnet
// port and reads the same snapshots; its buttons run the same commands through the same dispatcher.
//
// Nothing a client does may slow the data path: requests that arrive in the same turn of the event loop
// share one snapshot and its renderings (fifty pollers cost one snapshot per turn, not fifty), the live
// page is fed by one render per second shared by every viewer, and requests meet limits on header size,
// header and request time, body size, open connections and event streams.

import { once } from 'node:events';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, BlockList } from 'node:net';
import { AuthThrottle, levelAllows, readToken, tokenMatches, type Level } from '../control/access.ts';
import { buildAllowList, isAllowed } from '../control/server.ts';
import type { ControlEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code, Exit, LbError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { LogBurst } from '../log-burst.ts';
import { History } from '../stats/history.ts';
import { renderJson, renderStatCsv } from '../stats/render.ts';
import type { Snapshot } from '../stats/snapshot.ts';
import { PAGE_CSS, PAGE_JS } from './assets.ts';
import { bearerToken, hostAllowed, originMatches, parseCookies, SESSION_COOKIE, SESSION_TTL_MS, Sessions } from './auth.ts';
import { METRICS_CONTENT_TYPE, MetricsExporter } from './metrics.ts';
import { ACTIONS, pageCells, pageShape, renderLogin, renderPage, renderResult, type Action } from './page.ts';

/** What the HTTP face needs from the running balancer (the Runtime, or whatever owns the snapshots). */
export interface HttpTarget {
  /** When lb started (ms since the epoch), for lb_start_time_seconds. */
  readonly startedAt: number;
  snapshot(): Snapshot;
  /** True once a stop (SIGTERM, `kill`) has begun: /healthz answers 503 from then on. */
  draining(): boolean;
  /** Runs one control command at `level` through the Telnet port's dispatcher; the reply as Telnet gives it. */
  runCommand(level: Level, line: string): Promise<{ text: string; error?: string }>;
}

export interface HttpConfig {
  readonly listen: { readonly host: string; readonly port: number };
  /** The level of a client that passed the ACL (and gave the token, when there is one). */
  readonly level: Level;
  readonly allow: readonly string[];
  /** The control token's file: levels above read then need the token (login cookie or Bearer). */
  readonly tokenFile: string | null;
}

/** The HTTP face's settings from `[control]`, or null when `http` is not set. */
export function httpConfigOf(control: ControlEntry | null): HttpConfig | null {
  const c = control as (ControlEntry & { http?: { host: string | null; port: number } | null; httpLevel?: Level; tokenFile?: string | null }) | null;
  if (!c?.http) return null;
  return {
    // No host given means loopback here, unlike a listener: a status page is not for every interface by accident.
    listen: { host: c.http.host ?? '127.0.0.1', port: c.http.port },
    level: c.httpLevel ?? 'read',
    allow: c.allow,
    tokenFile: c.tokenFile ?? null,
  };
}

export interface HttpLimits {
  /** Time to receive a request's headers (slowloris). */
  headersTimeoutMs: number;
  /** Time to receive a whole request, body included. */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this long. */
  keepAliveTimeoutMs: number;
  maxHeaderBytes: number;
  maxBodyBytes: number;
  maxConnections: number;
  /** Open /events streams (live pages) at once. */
  maxStreams: number;
  /** One history sample (and live-page tick) per this many ms. */
  sampleMs: number;
}

export const DEFAULT_LIMITS: HttpLimits = {
  headersTimeoutMs: 5000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5000,
  maxHeaderBytes: 8192,
  maxBodyBytes: 8192,
  maxConnections: 256,
  maxStreams: 32,
  sampleMs: 1000,
};

/** Seconds a browser may cache the page's script and stylesheet (they change only with lb's version). */
const ASSET_MAX_AGE = 3600;

const SECURITY_HEADERS: Record<string, string> = {
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  // Not no-referrer: under it a browser sends "Origin: null" with a form's POST, and the Origin check would refuse it.
  'Referrer-Policy': 'same-origin',
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
};

interface Access {
  level: Level;
  /** How the level was granted: no token configured, a login cookie, a Bearer header, or nothing yet. */
  via: 'open' | 'session' | 'bearer' | 'none';
  session: string;
}

export class HttpServer {
  readonly history: History;
  private config: HttpConfig;
  private readonly target: HttpTarget;
  private readonly log: Logger;
  private readonly limits: HttpLimits;
  private allow: BlockList;
  private token: string | null;
  private server: http.Server | null = null;
  private readonly sessions = new Sessions();
  /** Wrong tokens are answered late, later the more of them arrive: guessing is no faster in parallel. */
  private readonly throttle = new AuthThrottle();
  private readonly metrics = new MetricsExporter();
  private readonly streams = new Set<ServerResponse>();
  private sampler: NodeJS.Timeout | null = null;
  /** The snapshot of the current event-loop turn (dropped at the next one, so no answer is stale). */
  private snap: Snapshot | null = null;
  private rendered: { csv?: string; json?: string } = {};
  /** Requests closed by an exception: at most one log line per 5 s, counting those held back. */
  private readonly failures = new LogBurst(5000);

  constructor(config: HttpConfig, target: HttpTarget, log: Logger, limits: Partial<HttpLimits> = {}) {
    this.config = config;
    this.target = target;
    this.log = log;
    this.limits = { ...DEFAULT_LIMITS, ...limits };
    this.allow = buildAllowList(config.allow);
    this.token = config.tokenFile ? readToken(config.tokenFile) : null;
    this.history = new History();
  }

  async start(): Promise<void> {
    await this.listen();
    this.sample();
    this.sampler = setInterval(() => this.sample(), this.limits.sampleMs);
    this.sampler.unref();
  }

  /** Live pages connected now (open /events streams). */
  get liveStreams(): number {
    return this.streams.size;
  }

  /** Where it is bound (port 0 in the config means any free port). */
  address(): { host: string; port: number } | null {
    const a = this.server?.address();
    return a && typeof a === 'object' ? { host: (a as AddressInfo).address, port: (a as AddressInfo).port } : null;
  }

  /**
   * Phase one of a reload: a new address is bound now, beside the running one, which answers until the
   * switch; a failure throws and changes nothing. The switch (`commit`) applies the ACL, level and token
   * to the next request and closes the old socket (the history and logins stay). A token file that
   * cannot be read keeps the old token and logs why. A face moving to another host on the same port
   * cannot hold both sockets: it rebinds at the switch, back to its old address if the new one fails.
   */
  async stage(config: HttpConfig): Promise<HttpStaged> {
    const rebind = config.listen.host !== this.config.listen.host || config.listen.port !== this.config.listen.port;
    let staged: http.Server | null = null;
    let late = false;
    if (rebind) {
      try {
        staged = await this.bind(config.listen);
      } catch (err) {
        if (config.listen.port === 0 || config.listen.port !== this.address()?.port) throw err;
        late = true;
      }
    }
    return {
      commit: async () => {
        try {
          this.token = config.tokenFile ? readToken(config.tokenFile) : null;
        } catch (err) {
          this.log.log('error', 'http-error', { code: Code.CONTROL_DENIED, error: (err as Error).message, detail: 'the previous token stays' });
        }
        const before = this.config.listen;
        this.config = config;
        this.allow = buildAllowList(config.allow);
        if (staged) {
          await this.closeServer();
          this.server = staged;
        } else if (late) {
          await this.closeServer();
          try {
            this.server = await this.bind(config.listen);
          } catch (err) {
            this.log.log('error', 'http-error', { error: (err as Error).message, detail: `staying on ${formatHostPort(before.host, before.port)}` });
            this.server = await this.bind(before).catch(() => null);
          }
        }
      },
      abort: async () => {
        if (staged) await closeHttp(staged);
      },
    };
  }

  async close(): Promise<void> {
    if (this.sampler) clearInterval(this.sampler);
    this.sampler = null;
    await this.closeServer();
  }

  private async listen(): Promise<void> {
    this.server = await this.bind(this.config.listen);
  }

  private bind(listen: HttpConfig['listen']): Promise<http.Server> {
    const { host, port } = listen;
    const l = this.limits;
    const server = http.createServer(
      {
        headersTimeout: l.headersTimeoutMs,
        requestTimeout: l.requestTimeoutMs,
        keepAliveTimeout: l.keepAliveTimeoutMs,
        maxHeaderSize: l.maxHeaderBytes,
        // The timeouts above are enforced by a sweep at this interval (Node's default is 30 s).
        connectionsCheckingInterval: Math.min(1000, l.headersTimeoutMs),
      },
      (req, res) => this.guard(req, res),
    );
    server.maxConnections = l.maxConnections;
    const where = formatHostPort(host, port);
    return new Promise((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new LbError(Code.BIND, `http: cannot listen on ${where}: ${err.code ?? err.message}`, Exit.UNAVAILABLE)),
      );
      server.listen({ host, port }, () => {
        server.removeAllListeners('error');
        server.on('error', (err) => this.log.log('error', 'http-error', { error: err.message }));
        resolve(server);
      });
    });
  }

  private async closeServer(): Promise<void> {
    const server = this.server;
    this.server = null;
    for (const s of this.streams) s.destroy();
    this.streams.clear();
    if (server) await closeHttp(server);
  }

  // --- snapshots ------------------------------------------------------------------------------------

  private fresh(): Snapshot {
    if (!this.snap) this.setSnap(this.target.snapshot());
    return this.snap!;
  }

  private setSnap(snap: Snapshot): void {
    if (!this.snap) setImmediate(() => (this.snap = null));
    this.snap = snap;
    this.rendered = {};
  }

  /** Once a second: a sample for the charts, and one tick for every live page. */
  private sample(): void {
    let snap: Snapshot;
    try {
      snap = this.target.snapshot();
    } catch (err) {
      this.log.log('error', 'http-error', { error: `snapshot: ${(err as Error).message}` });
      return;
    }
    this.setSnap(snap);
    this.history.record(snap);
    if (this.streams.size === 0) return;
    const sample = this.history.newest();
    if (!sample) return;
    const data = JSON.stringify({ shape: pageShape(snap), cells: pageCells(snap, this.history), sample });
    const message = `event: tick\ndata: ${data}\n\n`;
    for (const res of this.streams) {
      // A viewer that does not read (a stalled tab, a script) is dropped rather than buffered without end.
      if (res.writableLength > 1 << 20) res.destroy();
      else res.write(message);
    }
  }

  // --- requests -------------------------------------------------------------------------------------

  /** The error boundary of one request: an exception closes that request, never the process. */
  private guard(req: IncomingMessage, res: ServerResponse): void {
    try {
      this.handle(req, res);
    } catch (err) {
      this.failed(req, res, err as Error);
    }
  }

  private failed(req: IncomingMessage, res: ServerResponse, err: Error): void {
    if (req.destroyed || res.destroyed) return void res.destroy(); // the client went away (or was cut off)
    const path = (req.url ?? '/').split('?', 1)[0]!.slice(0, 200);
    const count = this.failures.hit(); // a client making requests fail in a loop writes a few lines, not thousands
    if (count > 0) this.log.log('error', 'http-error', { code: Code.SESSION_FAILED, error: err.stack ?? err.message, path, count });
    if (!res.headersSent) this.text(res, 500, `error: ${err.message} [${Code.SESSION_FAILED}]`, { Connection: 'close' });
    else res.destroy();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const peer = req.socket.remoteAddress ?? '';
    if (!isAllowed(this.allow, peer)) {
      this.log.log('warn', 'http-denied', { code: Code.CONTROL_DENIED, peer: formatHostPort(peer, req.socket.remotePort ?? 0) });
      return this.text(res, 403, `error: access denied for ${peer} (control.allow) [${Code.CONTROL_DENIED}]`, { Connection: 'close' });
    }
    if (!hostAllowed(this.config.listen.host, req.headers.host)) {
      return this.text(res, 403, `error: this page answers loopback host names only, not "${req.headers.host ?? ''}" [${Code.CONTROL_DENIED}]`);
    }
    const path = (req.url ?? '/').split('?', 1)[0]!;
    const method = req.method ?? 'GET';
    const read = method === 'GET' || method === 'HEAD';
    const access = this.access(req);
    if (access === null) {
      this.log.log('warn', 'http-auth-failed', { code: Code.CONTROL_DENIED, peer });
      return this.later(res, () => this.text(res, 401, `error: wrong token [${Code.CONTROL_DENIED}]`, { 'WWW-Authenticate': 'Bearer realm="lb"' }));
    }
    const route = Object.hasOwn(ROUTES, path) ? ROUTES[path] : undefined; // not "/constructor" from the prototype
    if (!route) return this.text(res, 404, `error: no such page: ${path.slice(0, 200)}`);
    const allowed = route === 'post' ? method === 'POST' : route === 'get' ? read : read || method === 'POST';
    if (!allowed) {
      const allow = route === 'post' ? 'POST' : route === 'get' ? 'GET, HEAD' : 'GET, HEAD, POST';
      return this.text(res, 405, `error: ${method} not allowed here`, { Allow: allow });
    }
    this.route(path, req, res, access).catch((err: Error) => this.failed(req, res, err));
  }

  private async route(path: string, req: IncomingMessage, res: ServerResponse, access: Access): Promise<void> {
    switch (path) {
      case '/': {
        const snap = this.fresh();
        const canLogIn = this.token !== null && access.via === 'none' && this.config.level !== 'read';
        const html = renderPage(snap, this.history, {
          level: access.level,
          buttons: levelAllows(access.level, 'operator'),
          canLogIn,
          loggedIn: access.via === 'session',
          csrf: this.sessions.csrf(access.session),
        });
        return this.send(res, 200, 'text/html; charset=utf-8', html);
      }
      case '/metrics': {
        const snap = this.fresh();
        return this.send(res, 200, METRICS_CONTENT_TYPE, await this.metrics.render(snap, this.target.startedAt));
      }
      case '/stats.json': {
        const snap = this.fresh();
        this.rendered.json ??= renderJson(snap);
        return this.send(res, 200, 'application/json', this.rendered.json);
      }
      case '/stats.csv': {
        const snap = this.fresh();
        this.rendered.csv ??= renderStatCsv(snap) + '\n';
        return this.send(res, 200, 'text/csv; charset=utf-8', this.rendered.csv);
      }
      case '/healthz':
        return this.target.draining() ? this.text(res, 503, 'draining') : this.text(res, 200, 'ok');
      case '/page.js':
        return this.send(res, 200, 'text/javascript; charset=utf-8', PAGE_JS, { 'Cache-Control': `max-age=${ASSET_MAX_AGE}` });
      case '/page.css':
        return this.send(res, 200, 'text/css; charset=utf-8', PAGE_CSS, { 'Cache-Control': `max-age=${ASSET_MAX_AGE}` });
      case '/events':
        return this.events(req, res);
      case '/favicon.ico':
        res.writeHead(204, { 'Cache-Control': `max-age=${ASSET_MAX_AGE}` });
        return void res.end();
      case '/login':
        if (req.method === 'POST') return this.login(req, res);
        return this.send(res, 200, 'text/html; charset=utf-8', renderLogin(this.token ? '' : 'no token_file is configured: there is nothing to log in to'));
      case '/logout':
        return this.logout(req, res, access);
      case '/action':
        return this.action(req, res, access);
    }
  }

  /** The level of this request; null for a wrong Bearer token (a script should hear that, not get read-only). */
  private access(req: IncomingMessage): Access | null {
    if (this.token === null) return { level: this.config.level, via: 'open', session: '' };
    const bearer = bearerToken(req.headers.authorization);
    if (bearer !== null) return tokenMatches(bearer, this.token) ? { level: this.config.level, via: 'bearer', session: '' } : null;
    const id = parseCookies(req.headers.cookie).get(SESSION_COOKIE);
    if (id && this.sessions.valid(id)) return { level: this.config.level, via: 'session', session: id };
    return { level: 'read', via: 'none', session: '' };
  }

  private events(req: IncomingMessage, res: ServerResponse): void {
    if (this.streams.size >= this.limits.maxStreams) {
      return this.text(res, 503, `error: too many live pages open (${this.limits.maxStreams})`, { 'Retry-After': '5' });
    }
    const snap = this.fresh();
    res.writeHead(200, { ...SECURITY_HEADERS, 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store', 'X-Accel-Buffering': 'no' });
    if (req.method === 'HEAD') return void res.end();
    const init = JSON.stringify({ shape: pageShape(snap), cells: pageCells(snap, this.history), history: this.history.toJSON() });
    res.write(`retry: 2000\nevent: init\ndata: ${init}\n\n`);
    this.streams.add(res);
    res.on('close', () => this.streams.delete(res));
  }

  private async login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!originMatches(req.headers.origin, req.headers.host)) return this.text(res, 403, `error: cross-site request refused [${Code.CONTROL_DENIED}]`);
    const form = await this.form(req, res);
    if (!form) return;
    const given = form.get('token') ?? '';
    if (this.token === null || !tokenMatches(given, this.token)) {
      this.log.log('warn', 'http-auth-failed', { code: Code.CONTROL_DENIED, peer: req.socket.remoteAddress ?? '' });
      return this.later(res, () => this.send(res, 403, 'text/html; charset=utf-8', renderLogin(this.token === null ? 'no token_file is configured' : 'wrong token')));
    }
    const id = this.sessions.create();
    this.log.log('info', 'http-login', { peer: req.socket.remoteAddress ?? '' });
    res.writeHead(303, {
      ...SECURITY_HEADERS,
      Location: '/',
      'Set-Cookie': `${SESSION_COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${SESSION_TTL_MS / 1000}`,
      'Content-Length': 0,
    });
    res.end();
  }

  private async logout(req: IncomingMessage, res: ServerResponse, access: Access): Promise<void> {
    const form = await this.form(req, res);
    if (!form) return;
    if (access.via === 'session' && this.sessions.csrfValid(access.session, form.get('csrf') ?? undefined)) this.sessions.drop(access.session);
    res.writeHead(303, { ...SECURITY_HEADERS, Location: '/', 'Set-Cookie': `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`, 'Content-Length': 0 });
    res.end();
  }

  private async action(req: IncomingMessage, res: ServerResponse, access: Access): Promise<void> {
    const html = (req.headers.accept ?? '').includes('text/html');
    const refuse = (status: number, text: string): void =>
      html ? this.send(res, status, 'text/html; charset=utf-8', renderResult(text, false)) : this.text(res, status, text);
    if (!levelAllows(access.level, 'operator')) {
      const how = this.token !== null && this.config.level !== 'read' ? 'log in with the control token' : 'control.http_level must be "operator" or "admin"';
      return refuse(403, `error: the status page is read-only for you (level ${access.level}): ${how} [${Code.CONTROL_NOT_ADMIN}]`);
    }
    if (!originMatches(req.headers.origin, req.headers.host)) return refuse(403, `error: cross-site request refused [${Code.CONTROL_DENIED}]`);
    const form = await this.form(req, res);
    if (!form) return;
    // A Bearer token is not sent by browsers on their own, so it needs no CSRF token; cookies and open access do.
    if (access.via !== 'bearer' && !this.sessions.csrfValid(access.session, form.get('csrf') ?? undefined)) {
      return refuse(403, `error: missing or stale form token; reload the page [${Code.CONTROL_DENIED}]`);
    }
    const cmd = form.get('cmd') ?? '';
    const listener = form.get('listener') ?? '';
    const group = form.get('group') ?? '';
    const backend = form.get('backend') ?? '';
    if (!(ACTIONS as readonly string[]).includes(cmd) || !/^[^\s]{1,200}$/.test(listener) || !/^\d{1,6}$/.test(group) || !/^\d{1,6}$/.test(backend)) {
      return refuse(400, `error: expected cmd=${ACTIONS.join('|')}, listener, group and backend [${Code.CONTROL_BAD_ARGS}]`);
    }
    const line = `${cmd as Action} ${listener} ${group} ${backend}`;
    const reply = await this.target.runCommand(access.level, line);
    this.snap = null; // a read in this same turn shows the change
    const peer = formatHostPort(req.socket.remoteAddress ?? '?', req.socket.remotePort ?? 0);
    this.log.log('info', 'http-command', { peer, command: line, ok: !reply.error });
    const text = reply.error ? `${reply.text} [${reply.error}]` : reply.text;
    if (reply.error) return refuse(reply.error === Code.CONTROL_NOT_ADMIN ? 403 : 400, text);
    if (html) return this.send(res, 200, 'text/html; charset=utf-8', renderResult(text, true));
    return this.text(res, 200, text);
  }

  /** Reads a urlencoded body within the limit; on a problem answers and resolves null. */
  private async form(req: IncomingMessage, res: ServerResponse): Promise<URLSearchParams | null> {
    const max = this.limits.maxBodyBytes;
    const declared = Number(req.headers['content-length'] ?? 0);
    const tooLarge = (): null => {
      this.text(res, 413, `error: request body over ${max} bytes`, { Connection: 'close' });
      // Whatever else the client sends is not read: the connection ends once the answer is out.
      res.once('finish', () => req.socket.destroy());
      return null;
    };
    if (declared > max) return tooLarge();
    const type = (req.headers['content-type'] ?? 'application/x-www-form-urlencoded').split(';', 1)[0]!.trim();
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > max) return tooLarge();
      chunks.push(chunk);
    }
    if (type !== 'application/x-www-form-urlencoded') {
      this.text(res, 415, 'error: send the form as application/x-www-form-urlencoded');
      return null;
    }
    return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  }

  /** Answers a failed authentication after the throttle's delay (the timer does not keep lb alive). */
  private later(res: ServerResponse, answer: () => void): void {
    setTimeout(() => {
      if (!res.destroyed) answer();
    }, this.throttle.failed(1, Date.now())).unref();
  }

  private send(res: ServerResponse, status: number, type: string, body: string, headers: Record<string, string> = {}): void {
    res.writeHead(status, {
      ...SECURITY_HEADERS,
      'Content-Type': type,
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
      ...headers,
    });
    res.end(body);
  }

  private text(res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
    this.send(res, status, 'text/plain; charset=utf-8', text + '\n', headers);
  }
}

/** Every path the face answers, and whether it takes GET/HEAD or POST. */
const ROUTES: Readonly<Record<string, 'get' | 'post' | 'both'>> = {
  '/': 'get',
  '/metrics': 'get',
  '/stats.json': 'get',
  '/stats.csv': 'get',
  '/healthz': 'get',
  '/page.js': 'get',
  '/page.css': 'get',
  '/events': 'get',
  '/favicon.ico': 'get',
  '/login': 'both',
  '/logout': 'post',
  '/action': 'post',
};

/** A change staged: what it binds is bound; `commit` switches to it, `abort` drops it. */
export interface HttpStaged {
  commit(): Promise<void>;
  abort(): Promise<void>;
}

/** The face of a new table, staged (stageHttp): `commit` gives the face then running, null for none. */
export interface StagedFace {
  commit(): Promise<HttpServer | null>;
  abort(): Promise<void>;
}

/**
 * The HTTP face of a new table (start, reload), staged: a new face or a new address is bound now, and a
 * failure throws before anything switches (the reload is refused, the running face stays). `commit`
 * returns the face then running (null: the table has none).
 */
export async function stageHttp(
  current: HttpServer | null,
  control: ControlEntry | null,
  target: HttpTarget,
  log: Logger,
): Promise<StagedFace> {
  const config = httpConfigOf(control);
  if (!config) {
    return {
      commit: async () => {
        await current?.close();
        return null;
      },
      abort: async () => undefined,
    };
  }
  if (current) {
    const staged = await current.stage(config);
    return {
      commit: async () => {
        await staged.commit();
        return current;
      },
      abort: () => staged.abort(),
    };
  }
  const fresh = new HttpServer(config, target, log);
  try {
    await fresh.start();
  } catch (err) {
    await fresh.close();
    throw err;
  }
  return { commit: async () => fresh, abort: () => fresh.close() };
}

/** Closes a server and every connection it has (a page's keep-alive, an /events stream). */
async function closeHttp(server: http.Server): Promise<void> {
  const closed = once(server, 'close');
  server.close();
  server.closeAllConnections();
  await closed;
}
