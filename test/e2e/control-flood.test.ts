// No control-port client the ACL allows can stall forwarding or grow lb's memory without bound (issue 11
// items 6 and 12): floods of short lines, megabyte lines, and clients that send but never read. lb runs as a
// process (its own event loop and RSS, measured from /proc); the backends and clients run here.

import { readFileSync } from 'node:fs';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { backendOf, connectClient, echoServer, HOST, track, within, type TestClient } from '../helpers/backends.ts';
import { ctl, expectAlive, openSession, startCliLb, startControlLb, useControlScope, webToml, type CliLb } from '../helpers/control.ts';
import { MAX_UNREAD_OUTPUT } from '../../src/control/server.ts';

/**
 * What a flood may add to lb's RSS (KiB). Unbounded, these floods took it from ~100 to ~320 MiB; the
 * bound leaves room for the worker threads' own heaps, which grow a little whatever the control port does.
 */
const RSS_BOUND_KB = 64 * 1024;

/**
 * The slowest data-path round trip allowed while the control port is flooded. What it protects: the
 * forwarding threads never wait on the control port. A stall lasts as long as the flood's handling (seconds
 * here: these floods take 3-40 s to work through); a quiet machine stays under 200 ms (the bound until
 * 2026-12), and a loaded one (a busy process per core beside the suite) was seen at 218 ms, so 1 s.
 */
const DATA_PATH_MS = 1000;

const scope = useControlScope();

async function cliLb(control: Record<string, unknown> = {}): Promise<{ lbp: CliLb; port: number; web: number }> {
  const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
  const lbp = await startCliLb([scope.scratch().write('lb.toml', webToml(control, [a.port, b.port]))]);
  return { lbp, port: lbp.controlPort, web: lbp.ports.web! };
}

/** Resident set size of a process in KiB, from /proc (Linux). */
function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/**
 * Round trips over the data path while `busy()` holds: a new connection every 20 ms (what a client of the
 * balancer sees) and a ping over one long-lived relay. Returns every latency in ms (bounded: at most 1,000
 * probes, and each probe at most 5 s).
 */
async function probeWhile(web: number, busy: () => boolean): Promise<number[]> {
  const latencies: number[] = [];
  const relay: TestClient = await connectClient(web);
  for (let i = 0; i < 1000 && busy(); i++) {
    const t0 = performance.now();
    const fresh = await connectClient(web);
    expect(backendOf(await fresh.request(`new ${i}`, 5000))).toMatch(/^[ab]$/);
    await fresh.close();
    const t1 = performance.now();
    await relay.request(`ping ${i}`, 5000);
    const t2 = performance.now();
    latencies.push(t1 - t0, t2 - t1);
    await new Promise((r) => setTimeout(r, 20));
  }
  await relay.close();
  return latencies;
}

/** A raw client that writes `payload`, half-closes, and reads (and drops) whatever lb answers. */
function flooder(port: number, payload: Buffer): { done: Promise<void>; received(): number } {
  const socket = net.connect({ port, host: HOST, allowHalfOpen: true });
  let received = 0;
  socket.on('data', (d: Buffer) => (received += d.length));
  socket.on('error', () => undefined);
  socket.on('connect', () => socket.end(payload));
  const done = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('end', () => socket.destroy());
  track({ close: async () => void (socket.destroy(), await within(done, 3000, 'a flooder to close')) });
  return { done, received: () => received };
}

describe('a flood of short lines', () => {
  for (const [label, line] of [
    ['bare LF (a script)', '\n'],
    ['CR LF (a Telnet client: a prompt for each)', '\r\n'],
    ['CR NUL', '\r\0'],
  ] as const) {
    it(`1 MiB of empty lines, ${label}: data-path round trips stay under ${DATA_PATH_MS} ms and every line is read`, async () => {
      const { lbp, port, web } = await cliLb();
      const payload = Buffer.from(line.repeat((1 << 20) / line.length) + 'version\n', 'latin1');
      const flood = flooder(port, payload);
      let flooding = true;
      void flood.done.finally(() => (flooding = false));
      const latencies = await probeWhile(web, () => flooding);
      await within(flood.done, 30_000, 'lb to work through the flood and close the session');
      expectAlive(lbp);
      // The flood took long enough to be probed, and no probe waited.
      expect(latencies.length).toBeGreaterThanOrEqual(2);
      expect(Math.max(...latencies)).toBeLessThan(DATA_PATH_MS);
      expect(await ctl(port, 'version')).toMatch(/This is lb/);
    }, 60_000); // 9 s on a quiet machine, 13 s with a busy process per core
  }

  it(`four sessions flooding 1 MiB of one-word commands at once: the data path stays under ${DATA_PATH_MS} ms`, async () => {
    const { lbp, port, web } = await cliLb();
    const payload = Buffer.from('x\n'.repeat(1 << 19), 'latin1'); // 512 Ki unknown commands, each an error reply
    const floods = [0, 1, 2, 3].map(() => flooder(port, payload));
    let flooding = true;
    void Promise.all(floods.map((f) => f.done)).finally(() => (flooding = false));
    const latencies = await probeWhile(web, () => flooding);
    await within(Promise.all(floods.map((f) => f.done)), 100_000, 'lb to answer every flood');
    expectAlive(lbp);
    expect(latencies.length).toBeGreaterThanOrEqual(2);
    expect(Math.max(...latencies)).toBeLessThan(DATA_PATH_MS);
    // Every line got its reply (an error naming the unknown command), so nothing was silently dropped.
    for (const f of floods) expect(f.received()).toBeGreaterThan((1 << 19) * 40);
  }, 120_000); // four floods of 512 Ki commands: 37 s on a quiet machine, 49 s with a busy process per core
});

describe('what a session may buffer', () => {
  it('sessions sending 8 MiB lines: each gets one error per line, and lb stays within 64 MiB of its RSS', async () => {
    const { lbp, port, web } = await cliLb();
    const before = rssKiB(lbp.proc.pid!);
    const line = Buffer.alloc(8 << 20, 0x41);
    const sessions = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map(() => openSession(port)));
    let peak = before;
    for (const s of sessions) s.write(Buffer.concat([line, Buffer.from('\nversion\n')]));
    for (const s of sessions) {
      await s.waitRaw((b) => b.includes('This is lb'), 30_000, 'the version reply after an 8 MiB line');
      peak = Math.max(peak, rssKiB(lbp.proc.pid!));
    }
    for (const s of sessions) {
      const replies = s.replies();
      expect(replies[0]).toMatch(/^error: line longer than 4096 bytes ignored \[LB_CONTROL_BAD_ARGS\]$/);
      expect(replies[1]).toMatch(/This is lb/);
    }
    expect(peak - before).toBeLessThan(RSS_BOUND_KB);
    expect(backendOf(await (await connectClient(web)).request('after', 3000))).toMatch(/^[ab]$/);
    expectAlive(lbp);
  });

  it('sessions that send commands and never read: their input waits, lb stays within 64 MiB, others are served', async () => {
    const { lbp, port, web } = await cliLb();
    const before = rssKiB(lbp.proc.pid!);
    const sockets = [0, 1, 2, 3, 4, 5, 6, 7].map(() => {
      const s = net.connect({ port, host: HOST });
      s.on('error', () => undefined);
      s.pause(); // never reads: lb's replies pile up unread
      track({ close: async () => void s.destroy() });
      return s;
    });
    // Each writes 8 MiB of `show json` (a few hundred bytes of reply each) or until the kernel stops taking it.
    const chunk = Buffer.from('show json\n'.repeat(1 << 16));
    await Promise.all(
      sockets.map(async (s) => {
        await within(new Promise<void>((r) => s.once('connect', () => r())), 3000, 'a connect');
        for (let i = 0; i < 13 && s.write(chunk); i++);
      }),
    );
    let peak = before;
    for (let i = 0; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 100));
      peak = Math.max(peak, rssKiB(lbp.proc.pid!));
    }
    expect(peak - before).toBeLessThan(RSS_BOUND_KB);
    expect(backendOf(await (await connectClient(web)).request('meanwhile', 3000))).toMatch(/^[ab]$/);
    expect(await ctl(port, 'version')).toMatch(/This is lb/);
    expectAlive(lbp);
  });

  it('a reply far larger than the unread cap (show json of 30,000 backends, ~24 MB) reaches a client that reads it, whole', async () => {
    // Before: the reply was written at once, so what the kernel had not taken yet counted as unread output
    // and the session was closed mid-reply (seen with `show` of 100,000 backends, 12 MB).
    const backends = Array.from({ length: 30_000 }, (_, i) => `127.0.${(i >> 8) & 255}.${(i & 255) || 1}:${1000 + (i >> 16)}`);
    const { lb, port } = await startControlLb({ control: { listen: '127.0.0.1:0' }, listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends }] } } });
    const reply = await ctl(port, 'show json', 60_000);
    const json = JSON.parse(reply) as { listeners: { groups: { backends: unknown[] }[] }[] };
    expect(reply.length).toBeGreaterThan(8 * MAX_UNREAD_OUTPUT);
    expect(json.listeners[0]!.groups[0]!.backends).toHaveLength(30_000);
    const show = await ctl(port, 'show', 60_000);
    expect(show.split('\n')).toHaveLength(30_000 + 2);
    expect(lb.logs.all('control-flood')).toEqual([]);
  }, 60_000);

  it('a client that floods Telnet negotiation and never reads is closed with a reason once its unread output passes the cap', async () => {
    const { lbp, port, web } = await cliLb();
    const before = rssKiB(lbp.proc.pid!);
    const s = net.connect({ port, host: HOST, allowHalfOpen: true });
    s.on('error', () => undefined);
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    track({ close: async () => void s.destroy() });
    await within(new Promise<void>((r) => s.once('connect', () => r())), 3000, 'a connect');
    s.pause();
    // IAC DO <opt>: each asks for an answer (IAC WONT <opt>) that the client never reads.
    const dos = Buffer.alloc(3 * (1 << 16));
    for (let i = 0; i < dos.length; i += 3) dos.set([0xff, 0xfd, 0x01 + ((i / 3) % 200)], i);
    let peak = before;
    let writes = 0;
    let logged = false;
    const flooded = lbp.waitOutput((t) => /warn control-flood .*reason=/.test(t), 45_000, 'the control-flood log line', 'stderr');
    void flooded.then(() => (logged = true), () => undefined);
    for (; writes < 200 && !logged && !s.destroyed; writes++) {
      if (!s.write(dos)) {
        await within(Promise.race([new Promise((r) => s.once('drain', r)), closed, flooded]), 45_000, 'the flood to be taken or the session closed');
      }
      peak = Math.max(peak, rssKiB(lbp.proc.pid!));
    }
    await flooded;
    // Only now does the client read: what lb queued for it in its socket, and then the reason.
    const tail: Buffer[] = [];
    s.on('data', (d: Buffer) => tail.push(d));
    s.resume();
    await within(closed, 10_000, 'lb to close the session');
    expect(writes).toBeLessThan(200);
    expect(Buffer.concat(tail).toString('latin1')).toMatch(/error: closing this session: \d+ bytes of Telnet option answers unread \(limit 16384\) \[LB_CONTROL_FLOOD\]\n\n$/);
    expect(peak - before).toBeLessThan(RSS_BOUND_KB);
    expect(backendOf(await (await connectClient(web)).request('after', 3000))).toMatch(/^[ab]$/);
    expectAlive(lbp);
  }, 60_000); // the answers fill both loopback socket buffers (megabytes) first: 12 s quiet, over 20 s loaded
});
