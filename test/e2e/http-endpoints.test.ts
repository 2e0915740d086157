// The HTTP face's routes, numbers and access: /metrics, /stats.json, /stats.csv and /healthz agree with
// the control port; levels, CSRF, tokens and the ACL decide who may press a button.

import { execFileSync } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MetricsExporter } from '../../src/http/metrics.ts';
import { httpConfigOf } from '../../src/http/server.ts';
import { renderStatCsv } from '../../src/stats/render.ts';
import { connectClient, echoServer, sinkServer, until, within } from '../helpers/backends.ts';
import { adminControl, ctl, hasTool, TEST_TOKEN } from '../helpers/control.ts';
import { parseStatCsv } from '../helpers/health.ts';
import { csrfOf, get, login, metric, parseMetrics, post, startHttpLb, type HttpLb } from '../helpers/http.ts';
import { at, cleanup } from '../helpers/lb.ts';

afterEach(cleanup);

function doc(ports: number[], control: Record<string, unknown> = {}, listener: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    global: { access_log: false },
    control: { listen: '127.0.0.1:0', http: '127.0.0.1:0', ...control },
    listeners: { web: { listen: '127.0.0.1:0', connect_timeout: '1s', ...listener, groups: [{ policy: 'rr', backends: ports.map(at) }] } },
  };
}

/**
 * Waits until lb's own counters show `sent` bytes client→backend on listener web: bytes are counted where
 * they are relayed and published to the shared counters a moment later.
 */
function settled(h: HttpLb, sent: number): Promise<void> {
  return until(() => h.lb.rt.snapshot().listeners[0]!.sent === sent, 3000, `lb's counters to show ${sent} bytes sent`);
}

/** GET / with a Host header of our choosing (fetch will not send one). */
function statusWithHost(port: number, host: string): Promise<number> {
  return within(
    new Promise<number>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/', headers: { Host: host }, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
    }),
    3000,
    `GET / with Host ${host}`,
  );
}

/** Sends `bytes` through lb and waits for the echo of all of them. */
async function roundTrip(port: number, bytes: number): Promise<void> {
  const c = await connectClient(port);
  c.socket.write(Buffer.alloc(bytes, 0x61));
  await c.waitFor((r) => r.length >= bytes, 3000, `${bytes} echoed bytes`);
  await c.close();
}

describe('reads', () => {
  it('serves the page, the show json document, the show stat CSV and /healthz; 404 and 405 elsewhere', async () => {
    const a = await echoServer('a');
    const b = await echoServer('b');
    const h = await startHttpLb(doc([a.port, b.port]));
    await roundTrip(h.lb.port(), 1000);
    await settled(h, 1000);

    const page = await get(`${h.base}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(page.text).toContain(`data-row="B web 0 127.0.0.1:${a.port}"`);
    expect(page.text).toContain(`data-row="B web 0 127.0.0.1:${b.port}"`);
    expect(page.text.match(/class="st up"/g)).toHaveLength(2);

    const json = await get(`${h.base}/stats.json`);
    expect(json.headers.get('content-type')).toBe('application/json');
    const snap = JSON.parse(json.text) as { listeners: { name: string; total: number; sent: number }[] };
    expect(snap.listeners[0]).toMatchObject({ name: 'web', total: 1, sent: 1000 });

    // The same rows as the Telnet port's show stat. `lastchg` (seconds since a backend's last change) is a
    // clock, not a count: a loaded machine saw a second tick between the two requests, so it is left out.
    const csv = await get(`${h.base}/stats.csv`);
    const telnet = await ctl(h.lb.rt.control!.port(), 'show stat');
    const withoutClock = (text: string): Record<string, string>[] => parseStatCsv(text).map(({ lastchg: _clock, ...row }) => row);
    expect(withoutClock(csv.text)).toEqual(withoutClock(telnet));
    expect(csv.text.trimEnd().split('\n')[0]).toBe(telnet.split('\n')[0]); // and the same columns, in order

    expect((await get(`${h.base}/healthz`)).status).toBe(200);
    expect((await get(`${h.base}/page.js`)).headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    for (const p of ['/nope', '/constructor', '/__proto__', '/toString', '/stats.json/']) expect((await get(`${h.base}${p}`)).status, p).toBe(404);
    expect((await get(`${h.base}/stats.json`, { method: 'POST' })).status).toBe(405);
    expect((await get(`${h.base}/stats.json`, { method: 'HEAD' })).status).toBe(200);
  });

  it('answers /healthz 503 once a stop has begun', async () => {
    const a = await echoServer('a');
    const h = await startHttpLb(doc([a.port]));
    expect((await get(`${h.base}/healthz`)).text).toBe('ok\n');
    h.draining = true;
    const r = await get(`${h.base}/healthz`);
    expect([r.status, r.text]).toEqual([503, 'draining\n']);
  });
});

describe('live page feed and reloads', () => {
  it('streams an init event then a tick a second on /events, and holds at most maxStreams of them', async () => {
    const a = await echoServer('a');
    const h = await startHttpLb(doc([a.port]), { maxStreams: 2, sampleMs: 100 });
    const aborts = [new AbortController(), new AbortController()];
    const streams = await Promise.all(aborts.map((c) => fetch(`${h.base}/events`, { signal: c.signal })));
    try {
      expect(streams[0]!.headers.get('content-type')).toBe('text/event-stream');
      const reader = streams[0]!.body!.getReader();
      let text = '';
      for (let i = 0; i < 50 && !text.includes('event: tick'); i++) text += new TextDecoder().decode((await within(reader.read(), 3000, 'an event')).value);
      expect(text).toMatch(/^retry: 2000\nevent: init\ndata: \{"shape":/);
      expect(text).toContain('\n\nevent: tick\ndata: {"shape":');
      const full = await get(`${h.base}/events`);
      expect([full.status, full.text]).toEqual([503, 'error: too many live pages open (2)\n']);
    } finally {
      for (const c of aborts) c.abort();
    }
    const again = new AbortController();
    await until(() => h.http.liveStreams === 0, 3000, 'the aborted streams to be let go');
    const r = await fetch(`${h.base}/events`, { signal: again.signal });
    expect(r.status).toBe(200);
    again.abort();
  });

  it('applies a reload: a new allow list at once, a new address by rebinding', async () => {
    const a = await echoServer('a');
    const h = await startHttpLb(doc([a.port]));
    const cfg = httpConfigOf(h.lb.rt.table.control)!;
    await (await h.http.stage({ ...cfg, allow: ['10.0.0.0/8'] })).commit();
    expect((await get(`${h.base}/healthz`)).status).toBe(403);
    await (await h.http.stage({ ...cfg, listen: { host: '127.0.0.2', port: 0 } })).commit();
    const moved = h.http.address()!;
    expect(moved.host).toBe('127.0.0.2');
    expect((await get(`http://127.0.0.2:${moved.port}/healthz`)).text).toBe('ok\n');
    await expect(get(`${h.base}/healthz`, { ms: 2000 })).rejects.toThrow(); // the old address is closed
  });
});

describe('/metrics', () => {
  it('is Prometheus text with HELP and TYPE lines that promtool accepts, with the default process metrics', async (ctx) => {
    const a = await echoServer('a');
    const h = await startHttpLb(doc([a.port], {}, { queue: { max: 5, timeout: '1s' } }));
    await roundTrip(h.lb.port(), 10);
    await settled(h, 10);
    const r = await get(`${h.base}/metrics`);
    expect(r.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    for (const name of [
      'lb_backend_connections_total', 'lb_backend_bytes_sent_total', 'lb_backend_bytes_received_total', 'lb_backend_current_connections',
      'lb_backend_max_connections', 'lb_backend_up', 'lb_backend_connect_failures_total', 'lb_backend_check_failures_total',
      'lb_listener_connections_total', 'lb_listener_current_connections', 'lb_listener_bytes_sent_total', 'lb_listener_bytes_received_total',
      'lb_listener_no_backend_total', 'lb_queue_length', 'lb_queue_timeouts_total', 'lb_build_info', 'lb_start_time_seconds',
      'lb_maxconn', 'lb_current_connections', 'lb_maxconn_reached_total', 'lb_maxconn_refused_total',
      'process_resident_memory_bytes', 'process_cpu_seconds_total',
    ]) {
      expect(r.text, name).toMatch(new RegExp(`^# HELP ${name} .+\\n# TYPE ${name} (counter|gauge)$`, 'm'));
    }
    const m = parseMetrics(r.text);
    const labels = { listener: 'web', group: 0, backend: `127.0.0.1:${a.port}` };
    expect(metric(m, 'lb_backend_bytes_sent_total', labels)).toBe(10);
    expect(metric(m, 'lb_backend_up', labels)).toBe(1);
    expect(metric(m, 'lb_build_info', { version: h.lb.rt.version, node: process.version })).toBe(1);
    expect(metric(m, 'lb_start_time_seconds')).toBe(h.lb.rt.startedAt / 1000);
    const conns = h.lb.rt.snapshot().conns; // no maxconn configured: the default from the descriptor limit
    expect(metric(m, 'lb_maxconn')).toBe(conns.max);
    expect(conns.max).toBeGreaterThan(0);
    expect(metric(m, 'lb_maxconn_reached_total')).toBe(0);
    if (!hasTool('promtool')) return ctx.skip('promtool (Debian prometheus) is not installed');
    // promtool reads the exposition on stdin and exits non-zero on a malformed line.
    execFileSync('promtool', ['check', 'metrics'], { input: r.text, timeout: 10_000 });
  });

  it('carries the same numbers as show stat rendered from the same snapshot, taken during traffic', async () => {
    const sinks = [await sinkServer('s1', { keep: false }), await sinkServer('s2', { keep: false })];
    const h = await startHttpLb(doc(sinks.map((s) => s.port)));
    const clients = await Promise.all(Array.from({ length: 6 }, () => connectClient(h.lb.port())));
    // Traffic in flight: clients write (bounded in count) while the snapshot is taken.
    let writing = true;
    const writers = clients.map(async (c, i) => {
      for (let k = 0; k < 5000 && writing; k++) {
        c.socket.write(Buffer.alloc(1000 + i));
        await new Promise((r) => setTimeout(r, 1));
      }
    });
    await until(() => h.lb.rt.snapshot().listeners[0]!.sent > 0, 3000, 'bytes to be counted');
    const snap = h.lb.rt.snapshot();
    const m = parseMetrics(await new MetricsExporter().render(snap, h.lb.rt.startedAt));
    const rows = parseStatCsv(renderStatCsv(snap));
    writing = false;
    await Promise.all(writers);
    const front = rows.find((r) => r.svname === 'FRONTEND')!;
    const L = { listener: 'web' };
    expect(metric(m, 'lb_listener_connections_total', L)).toBe(Number(front.stot));
    expect(metric(m, 'lb_listener_current_connections', L)).toBe(Number(front.scur));
    expect(metric(m, 'lb_listener_bytes_sent_total', L)).toBe(Number(front.bin));
    expect(metric(m, 'lb_listener_bytes_received_total', L)).toBe(Number(front.bout));
    expect(metric(m, 'lb_listener_no_backend_total', L)).toBe(Number(front.ereq));
    const servers = rows.filter((r) => r.type === '2');
    expect(servers).toHaveLength(2);
    expect(servers.reduce((n, r) => n + Number(r.bin), 0)).toBeGreaterThan(0); // the snapshot did see traffic
    for (const r of servers) {
      const B = { listener: 'web', group: r.lb_group!, backend: r.svname! };
      expect(metric(m, 'lb_backend_connections_total', B)).toBe(Number(r.stot));
      expect(metric(m, 'lb_backend_attempts_total', B)).toBe(Number(r.lbtot));
      expect(metric(m, 'lb_backend_bytes_sent_total', B)).toBe(Number(r.bin));
      expect(metric(m, 'lb_backend_bytes_received_total', B)).toBe(Number(r.bout));
      expect(metric(m, 'lb_backend_current_connections', B)).toBe(Number(r.scur));
      expect(metric(m, 'lb_backend_peak_connections', B)).toBe(Number(r.smax));
      expect(metric(m, 'lb_backend_connect_failures_total', B)).toBe(Number(r.econ));
      expect(metric(m, 'lb_backend_up', B)).toBe(r.status === 'UP' ? 1 : 0);
    }
  });

  it('equals the Telnet port\'s show stat once traffic has settled', async () => {
    const a = await echoServer('a');
    const b = await echoServer('b');
    const h = await startHttpLb(doc([a.port, b.port]));
    for (let i = 0; i < 5; i++) await roundTrip(h.lb.port(), 300 + i);
    await settled(h, 1510);
    const csv = parseStatCsv(await ctl(h.lb.rt.control!.port(), 'show stat'));
    const m = parseMetrics((await get(`${h.base}/metrics`)).text);
    for (const r of csv.filter((x) => x.type === '2')) {
      const B = { listener: 'web', group: 0, backend: r.svname! };
      expect([metric(m, 'lb_backend_bytes_sent_total', B), metric(m, 'lb_backend_bytes_received_total', B), metric(m, 'lb_backend_connections_total', B)])
        .toEqual([Number(r.bin), Number(r.bout), Number(r.stot)]);
    }
  });
});

describe('buttons and levels', () => {
  it('at read level: no buttons, and a forged POST is refused', async () => {
    const a = await echoServer('a');
    const h = await startHttpLb(doc([a.port]));
    const page = await get(`${h.base}/`);
    expect(page.text).not.toContain('<button');
    expect(csrfOf(page.text)).toBeNull();
    const r = await post(`${h.base}/action`, { cmd: 'disable', listener: 'web', group: 0, backend: 0, csrf: 'forged' });
    expect(r.status).toBe(403);
    expect(r.text).toMatch(/^error: the status page is read-only for you \(level read\).*\[LB_CONTROL_NOT_ADMIN\]\n$/);
    expect(h.lb.rt.table.listeners[0]!.groups[0]!.backends[0]!.enabled).toBe(true);
  });

  it('at operator level: the button answers with the Telnet command\'s own text; CSRF and Origin are checked', async () => {
    const a = await echoServer('a');
    const b = await echoServer('b');
    // The control port at admin (after `auth`) for the comparison; the page at operator after a login.
    const h = await startHttpLb(doc([a.port, b.port], { ...adminControl(), http_level: 'operator' }));
    const cookie = await login(h.base, TEST_TOKEN);
    const page = await get(`${h.base}/`, { headers: { Cookie: cookie } });
    const csrf = csrfOf(page.text)!;
    expect(page.text).toContain('<button type="submit" name="cmd" value="disable"');
    const act = (form: Record<string, string | number>, headers: Record<string, string> = {}) =>
      post(`${h.base}/action`, { listener: 'web', group: 0, backend: 1, ...form }, { Cookie: cookie, ...headers });

    expect((await act({ cmd: 'disable' })).status).toBe(403);
    expect((await act({ cmd: 'disable', csrf: csrf + 'x' })).status).toBe(403);
    expect((await act({ cmd: 'disable', csrf }, { Origin: 'http://evil.example' })).status).toBe(403);
    expect((await act({ cmd: 'kill', csrf })).status).toBe(400);

    const r = await act({ cmd: 'disable', csrf });
    expect([r.status, r.text]).toEqual([200, 'channel 1 disabled\n']);
    expect(h.lb.rt.table.listeners[0]!.groups[0]!.backends[1]!.enabled).toBe(false);
    const again = await act({ cmd: 'disable', csrf });
    const telnet = await ctl(h.lb.rt.control!.port(), 'disable web 0 1', 5000, { auth: true });
    expect(again.text.trimEnd()).toBe(telnet.trimEnd());
    expect(again.text).toBe('channel 1 already disabled\n');
    const missing = await act({ cmd: 'enable', backend: 7, csrf });
    expect(missing.status).toBe(400);
    expect(missing.text.trimEnd()).toBe((await ctl(h.lb.rt.control!.port(), 'enable web 0 7', 5000, { auth: true })).trimEnd());
    expect((await get(`${h.base}/`)).text).toMatch(/data-k="B web 0 127\.0\.0\.1:\d+\|state" class="st dis"/);
    expect(h.lb.logs.all({ event: 'http-command', command: 'disable web 0 1', ok: 'true' })).toHaveLength(2); // done, then already done
  });

  it('with token_file: read until the token is given, by login cookie or Bearer header', async () => {
    const a = await echoServer('a');
    const dir = mkdtempSync(path.join(tmpdir(), 'lb-http-'));
    try {
      const tokenFile = path.join(dir, 'token');
      writeFileSync(tokenFile, 's3cret-token\n');
      const h = await startHttpLb(doc([a.port], { http_level: 'operator', token_file: tokenFile }));
      const anon = await get(`${h.base}/`);
      expect(anon.text).not.toContain('<button');
      expect(anon.text).toContain('<a href="/login">log in</a>');
      const form = { cmd: 'drain', listener: 'web', group: 0, backend: 0 };
      expect((await post(`${h.base}/action`, { ...form, csrf: 'x' })).status).toBe(403);

      expect((await post(`${h.base}/action`, form, { Authorization: 'Bearer wrong' })).status).toBe(401);
      const bearer = await post(`${h.base}/action`, form, { Authorization: 'Bearer s3cret-token' });
      expect([bearer.status, bearer.text]).toEqual([200, 'channel 0 drained (no connections)\n']);

      expect((await post(`${h.base}/login`, { token: 'nope' })).status).toBe(403);
      const login = await post(`${h.base}/login`, { token: 's3cret-token' });
      expect(login.status).toBe(303);
      const cookie = login.headers.get('set-cookie')!;
      expect(cookie).toMatch(/^lb_session=[\w-]+; HttpOnly; SameSite=Strict; Path=\/; Max-Age=\d+$/);
      const session = cookie.split(';', 1)[0]!;
      const page = await get(`${h.base}/`, { headers: { Cookie: session } });
      const csrf = csrfOf(page.text)!;
      expect(page.text).toContain('value="enable"');
      expect(csrfOf(anon.text)).toBeNull();
      const enable = await post(`${h.base}/action`, { ...form, cmd: 'enable', csrf }, { Cookie: session });
      expect([enable.status, enable.text]).toEqual([200, 'channel 0 enabled\n']);
      // A session's form token is its own: another session's (or none) does not pass.
      expect((await post(`${h.base}/action`, { ...form, csrf: 'x' }, { Cookie: session })).status).toBe(403);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('bad input', () => {
  it('refuses clients outside control.allow with 403, and foreign Host names on a loopback face', async () => {
    const a = await echoServer('a');
    const h = await startHttpLb(doc([a.port], { allow: ['10.0.0.0/8'] }));
    const r = await get(`${h.base}/metrics`);
    expect(r.status).toBe(403);
    expect(r.text).toBe('error: access denied for 127.0.0.1 (control.allow) [LB_CONTROL_DENIED]\n');
    expect(h.lb.logs.all({ event: 'http-denied' }).length).toBeGreaterThan(0);

    const open = await startHttpLb(doc([a.port]));
    expect(await statusWithHost(open.port, 'rebound.example.com')).toBe(403);
    expect(await statusWithHost(open.port, `rebound.example.com:${open.port}`)).toBe(403);
    expect(await statusWithHost(open.port, `localhost:${open.port}`)).toBe(200);
    expect(await statusWithHost(open.port, `127.0.0.1:${open.port}`)).toBe(200);
  });

  it('cuts off oversized headers and bodies, and requests that arrive too slowly', async () => {
    const a = await echoServer('a');
    const h = await startHttpLb(doc([a.port], { http_level: 'operator' }), { headersTimeoutMs: 300, requestTimeoutMs: 600 });
    const big = await get(`${h.base}/`, { headers: { 'X-Big': 'x'.repeat(20_000) } });
    expect(big.status).toBe(431);
    const body = await get(`${h.base}/action`, { method: 'POST', body: 'a='.padEnd(100_000, 'x'), headers: { 'Content-Type': 'application/x-www-form-urlencoded' } });
    expect(body.status).toBe(413);

    // Headers that never end: the server answers 408 and closes.
    const slow = net.connect(h.port, '127.0.0.1');
    slow.on('error', () => undefined);
    const start = Date.now();
    slow.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n');
    let got = '';
    slow.on('data', (d: Buffer) => (got += d.toString()));
    await within(new Promise((r) => slow.once('close', r)), 3000, 'the slow request to be cut off');
    expect(got).toMatch(/^HTTP\/1\.1 408/);
    expect(Date.now() - start).toBeLessThan(2500);

    // A body that trickles in past requestTimeout.
    const trickle = net.connect(h.port, '127.0.0.1');
    trickle.on('error', () => undefined);
    trickle.resume(); // read the 408, so the close is seen
    trickle.write('POST /action HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 50\r\n\r\ncmd=');
    const t0 = Date.now();
    await within(new Promise((r) => trickle.once('close', r)), 3000, 'the trickling request to be cut off');
    expect(Date.now() - t0).toBeLessThan(2500);
  });

  it('a handler that throws (made to, here) closes that request with a 500; the next request and lb go on', async () => {
    const a = await echoServer('a');
    const h = await startHttpLb(doc([a.port]));
    const server = h.http as unknown as { handle(req: unknown, res: unknown): void };
    const handle = server.handle;
    // Thrown synchronously inside the request handler (before any route), as a bug there would.
    server.handle = () => {
      throw new Error('made to fail');
    };
    for (let i = 0; i < 3; i++) {
      const r = await get(`${h.base}/stats.json`);
      expect(r.status).toBe(500);
      expect(r.text).toBe('error: made to fail [LB_SESSION_FAILED]\n');
    }
    server.handle = handle;
    expect((await get(`${h.base}/healthz`)).status).toBe(200);
    // Logged with its code and path, once for the burst (the count goes on the next line).
    const lines = h.lb.logs.all({ event: 'http-error', code: 'LB_SESSION_FAILED' });
    expect(lines).toHaveLength(1);
    expect(lines[0]!.fields['path']).toBe('/stats.json');
    expect(await (await connectClient(h.lb.port())).request('after', 3000)).toContain('after');
  });
});
