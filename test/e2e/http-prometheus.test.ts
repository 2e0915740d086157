// A real Prometheus (Debian's package) scrapes /metrics every second while clients go through lb; its own
// query API must then say, with rate(), what the backends themselves counted.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { connectClient, freePort, sinkServer, track, within } from '../helpers/backends.ts';
import { hasTool } from '../helpers/control.ts';
import { startHttpLb } from '../helpers/http.ts';
import { at, cleanup } from '../helpers/lb.ts';

afterEach(cleanup);

interface PromResult {
  metric: Record<string, string>;
  value: [number, string];
}

/** Starts Prometheus on loopback scraping `target` every second; storage in a temp dir removed at close. */
async function startPrometheus(target: string): Promise<{ query(q: string, time?: number): Promise<PromResult[]>; stderr(): string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'lb-prom-'));
  const port = await freePort();
  writeFileSync(
    path.join(dir, 'prometheus.yml'),
    [
      'global:',
      '  scrape_interval: 1s',
      '  evaluation_interval: 1s',
      'scrape_configs:',
      '  - job_name: lb',
      '    scrape_timeout: 900ms',
      '    static_configs:',
      `      - targets: ['${target}']`,
      '',
    ].join('\n'),
  );
  const proc = spawn(
    'prometheus',
    [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn', '--storage.tsdb.retention.time=1h'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = once(proc, 'exit');
  track({
    close: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        await within(exited, 5000, 'prometheus to stop').catch(() => {
          proc.kill('SIGKILL');
          return within(exited, 3000, 'prometheus to die');
        });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  });
  const query = async (q: string, time?: number): Promise<PromResult[]> => {
    const params = new URLSearchParams({ query: q, ...(time !== undefined ? { time: String(time) } : {}) });
    const r = await fetch(`http://127.0.0.1:${port}/api/v1/query?${params}`, { signal: AbortSignal.timeout(3000) });
    const body = (await r.json()) as { status: string; data: { result: PromResult[] }; error?: string };
    if (body.status !== 'success') throw new Error(`prometheus: ${body.error}`);
    return body.data.result;
  };
  return { query, stderr: () => stderr };
}

/** Polls a PromQL query until `ok` holds for its result (bounded): Prometheus has no event to await. */
async function waitFor(prom: { query(q: string): Promise<PromResult[]> }, q: string, ok: (r: PromResult[]) => boolean, ms: number): Promise<PromResult[]> {
  const end = Date.now() + ms;
  let last: PromResult[] | string = 'no answer yet';
  for (let i = 0; i < 1000 && Date.now() < end; i++) {
    try {
      const r = await prom.query(q);
      if (ok(r)) return r;
      last = r;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${q}; last: ${JSON.stringify(last)}`);
}

it('Prometheus scraping /metrics during traffic computes rate() of bytes and connections that the backends counted', async (ctx) => {
  if (!hasTool('prometheus')) return ctx.skip('prometheus (Debian package) is not installed');
  const reply = Buffer.alloc(300, 0x62);
  const sinks = [await sinkServer('s1', { send: reply, keep: false }), await sinkServer('s2', { send: reply, keep: false })];
  const h = await startHttpLb({
    global: { access_log: false },
    control: { http: '127.0.0.1:0' },
    listeners: { web: { listen: '127.0.0.1:0', groups: [{ policy: 'rr', backends: sinks.map((s) => at(s.port)) }] } },
  });
  const prom = await startPrometheus(`127.0.0.1:${h.port}`);
  // A first scrape before any traffic: every counter's first sample is 0.
  await waitFor(prom, 'lb_listener_connections_total{job="lb"}', (r) => r.length === 1 && r[0]!.value[1] === '0', 20_000);

  // Traffic over three seconds (several scrapes happen during it).
  const clients = 30;
  for (let i = 0; i < clients; i++) {
    const c = await connectClient(h.lb.port());
    c.socket.end(Buffer.alloc(1000 + i * 37, 0x61));
    await c.waitFor((r) => r.length >= reply.length, 3000, 'the backend\'s reply');
    await c.closed;
    await new Promise((r) => setTimeout(r, 100));
  }
  const counted = await Promise.all(
    sinks.map(async (s) => ({ backend: at(s.port), conns: s.accepted, bytesIn: (await Promise.all(s.received)).reduce((n, x) => n + x.bytes, 0) })),
  );
  expect(counted.reduce((n, c) => n + c.conns, 0)).toBe(clients);

  // Wait for a scrape that saw all of it, then evaluate at that very scrape's timestamp: with the first
  // sample at 0 and the last one at the evaluation time, rate() extrapolates nothing, so rate × range is
  // exactly the increase.
  // lb publishes relayed bytes to its shared counters a moment after relaying them: wait for the final numbers.
  const total = counted.reduce((n, c) => n + c.bytesIn, 0);
  await waitFor(prom, 'lb_listener_connections_total{job="lb"}', (r) => r[0]?.value[1] === String(clients), 10_000);
  await waitFor(prom, 'lb_listener_bytes_sent_total{job="lb"}', (r) => r[0]?.value[1] === String(total), 10_000);
  await waitFor(prom, 'lb_listener_bytes_received_total{job="lb"}', (r) => r[0]?.value[1] === String(clients * reply.length), 10_000);
  const t = Number((await prom.query('timestamp(lb_listener_connections_total{job="lb"})'))[0]!.value[1]);
  const range = 120; // wider than the whole run: the first (zero) sample is inside it
  const rateOf = async (name: string): Promise<Map<string, number>> => {
    const r = await prom.query(`rate(${name}{job="lb"}[${range}s])`, t);
    return new Map(r.map((x) => [x.metric.backend ?? x.metric.listener ?? '', Number(x.value[1]) * range]));
  };
  const bytesIn = await rateOf('lb_backend_bytes_sent_total');
  const bytesOut = await rateOf('lb_backend_bytes_received_total');
  const conns = await rateOf('lb_backend_connections_total');
  for (const c of counted) {
    expect(bytesIn.get(c.backend)).toBeCloseTo(c.bytesIn, 6);
    expect(bytesOut.get(c.backend)).toBeCloseTo(c.conns * reply.length, 6);
    expect(conns.get(c.backend)).toBeCloseTo(c.conns, 6);
  }
  const listenerBytes = await rateOf('lb_listener_bytes_sent_total');
  expect(listenerBytes.get('web')).toBeCloseTo(total, 6);
  const listenerConns = await rateOf('lb_listener_connections_total');
  expect(listenerConns.get('web')).toBeCloseTo(clients, 6);
  // And the per-second view a dashboard draws: the mean rate over the traffic is the total over its span.
  const perSec = await prom.query(`sum(rate(lb_backend_connections_total{job="lb"}[${range}s]))`, t);
  expect(Number(perSec[0]!.value[1])).toBeCloseTo(clients / range, 9);
}, 40_000);
