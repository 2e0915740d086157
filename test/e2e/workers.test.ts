// The data plane in worker threads (issue 10), with `workers = 2`: what must be global is global. maxc
// holds across workers (the backend counts its own connections), rr/leastconn/first read one shared
// state, the queue is FIFO whichever worker holds a waiter, health checks run once per backend, an
// operator's `disable` reaches every worker before it answers, counters are exact sums, reloads under
// load drop nothing, SIGTERM drains every worker, and a worker that dies is replaced with its counts kept.
//
// Which worker served a connection is read from its access-log id (ids interleave by worker), so every
// test that claims "over both workers" checks that both really took part.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execute, type Session } from '../../src/control/commands.ts';
import { renderInfo } from '../../src/stats/render.ts';
import { ask, backendOf, connectClient, echoServer, until, within, type TestClient } from '../helpers/backends.ts';
import { closeHealthServers, namedEcho, serve, sleep } from '../helpers/health.ts';
import { at, cleanup, spawnLb, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';
import { countingBackend, oneRequest, regionOf, regionsOf } from '../helpers/workers.ts';

const W = { workers: 2 };
const admin: Session = { listener: 'web', group: 0, level: 'admin', prompt: false };

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-workers-'));
});
afterEach(async () => {
  await cleanup();
  await closeHealthServers();
  rmSync(dir, { recursive: true, force: true });
});

/** Every access-log line, once `n` have been written. */
async function connLines(lb: { logs: InProcessLb['logs'] }, n: number, ms = 5000) {
  await lb.logs.waitFor('conn', { count: n, ms });
  return lb.logs.all('conn');
}

const backendSnap = (lb: InProcessLb, g: number, c: number) => lb.rt.snapshot().listeners[0]!.groups[g]!.backends[c]!;

/** Opens a client through lb, says `msg`, waits for the prefixed echo; returns the client (kept open) and the backend's name. */
async function held(port: number, msg: string): Promise<{ c: TestClient; name: string }> {
  const c = await connectClient(port);
  return { c, name: backendOf(await c.request(msg, 5000)) };
}

function count(names: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const n of names) out[n] = (out[n] ?? 0) + 1;
  return out;
}

describe('workers = 2: one shared state', () => {
  it('maxc is global: 60 parallel clients on a maxc 3 backend, which never counts more than 3 at once', async () => {
    const be = await countingBackend('maxc3', (s) => {
      s.once('data', () => {
        const t = setTimeout(() => s.end('done'), 100 + Math.floor(Math.random() * 200));
        s.once('close', () => clearTimeout(t));
      });
    });
    const lb = await startLb(webDoc([{ backends: [{ host: '127.0.0.1', port: be.port, maxc: 3 }] }], { queue: { max: 100, timeout: '30s' } }, W));
    const answers = await within(
      Promise.all(Array.from({ length: 60 }, (_, i) => oneRequest(lb.port(), `c${i}`, 25_000))),
      30_000,
      '60 clients to be served',
    );
    expect(answers.every((a) => a === 'done')).toBe(true);
    expect(be.accepted).toBe(60);
    expect(be.most).toBe(3);
    const st = lb.listener().state.groups[0]!.backends[0]!;
    expect(st.max).toBe(3);
    const conns = await connLines(lb, 60);
    expect(regionsOf(conns)).toEqual(new Set([0, 1]));
    await until(() => st.cur === 0, 3000, 'every slot to be released');
  }, 60_000);

  it('rr is global: 30 sequential connections go a, b, c in turn (10/10/10) whichever worker accepts them', async () => {
    const [a, b, c] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true }), echoServer('c', { prefix: true })]);
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(a.port), at(b.port), at(c.port)] }], {}, W));
    const seen: string[] = [];
    for (let i = 0; i < 30; i++) seen.push(backendOf(await ask(lb.port(), `hello ${i}`)));
    expect(seen).toEqual(Array.from({ length: 30 }, (_, i) => 'abc'[i % 3]));
    expect([a.accepted, b.accepted, c.accepted]).toEqual([10, 10, 10]);
    expect(regionsOf(await connLines(lb, 30))).toEqual(new Set([0, 1]));
  });

  it('leastconn reads the global counts: 30 held connections give 10/10/10; an emptied backend takes the next ones', async () => {
    const [a, b, c] = await Promise.all([namedEcho('a'), namedEcho('b'), namedEcho('c')]);
    const lb = await startLb(webDoc([{ policy: 'leastconn', backends: [at(a.port), at(b.port), at(c.port)] }], {}, W));
    const open: { c: TestClient; name: string }[] = [];
    for (let i = 0; i < 30; i++) open.push(await held(lb.port(), `x${i}`));
    expect(count(open.map((o) => o.name))).toEqual({ a: 10, b: 10, c: 10 });
    expect([a.current, b.current, c.current]).toEqual([10, 10, 10]);
    // Empty a: the next 6 clients all go there (it has the fewest, in every worker's eyes).
    await Promise.all(open.filter((o) => o.name === 'a').map((o) => o.c.close()));
    await until(() => backendSnap(lb, 0, 0).cur === 0, 3000, "a's slots to be released");
    const next: string[] = [];
    for (let i = 0; i < 6; i++) {
      const o = await held(lb.port(), `y${i}`);
      open.push(o);
      next.push(o.name);
    }
    expect(next).toEqual(['a', 'a', 'a', 'a', 'a', 'a']);
    await Promise.all(open.map((o) => o.c.close()));
    expect(regionsOf(await connLines(lb, 36))).toEqual(new Set([0, 1]));
  });

  it('first fills backends in order by the global counts: maxc 5 each, 12 held connections give 5/5/2', async () => {
    const [a, b, c] = await Promise.all([namedEcho('a'), namedEcho('b'), namedEcho('c')]);
    const one = (port: number) => ({ host: '127.0.0.1', port, maxc: 5 });
    const lb = await startLb(webDoc([{ policy: 'first', backends: [one(a.port), one(b.port), one(c.port)] }], {}, W));
    const open: { c: TestClient; name: string }[] = [];
    for (let i = 0; i < 12; i++) open.push(await held(lb.port(), `x${i}`));
    expect(open.map((o) => o.name)).toEqual([...'aaaaabbbbbcc']);
    expect([a.current, b.current, c.current]).toEqual([5, 5, 2]);
    // Two of a's leave: the next two go back to a, the first backend with room.
    await Promise.all(open.filter((o) => o.name === 'a').slice(0, 2).map((o) => o.c.close()));
    await until(() => backendSnap(lb, 0, 0).cur === 3, 3000, "two of a's slots to be released");
    for (let i = 0; i < 2; i++) {
      const o = await held(lb.port(), `y${i}`);
      open.push(o);
      expect(o.name).toBe('a');
    }
    expect(a.peak).toBe(5);
    await Promise.all(open.map((o) => o.c.close()));
    expect(regionsOf(await connLines(lb, 14))).toEqual(new Set([0, 1]));
  });

  it('the queue is FIFO across workers: 16 waiters on both workers are served in arrival order', async () => {
    const order: string[] = [];
    const rec = await countingBackend('rec', (s) => {
      s.once('data', (c: Buffer) => {
        order.push(c.toString());
        s.end(`served ${c.toString()}`);
      });
      s.on('end', () => s.end());
    });
    const lb = await startLb(webDoc([{ backends: [{ host: '127.0.0.1', port: rec.port, maxc: 1 }] }], { queue: { max: 50, timeout: '30s' } }, W));
    const h = await connectClient(lb.port()); // says nothing: the backend keeps its slot
    await until(() => rec.current === 1, 3000, 'the holder to reach the backend');
    const names = Array.from({ length: 16 }, (_, i) => `w${String(i + 1).padStart(2, '0')}`);
    const waiters: TestClient[] = [];
    for (const [i, name] of names.entries()) {
      const c = await connectClient(lb.port());
      void c.ended.then(() => c.socket.end()); // once answered, leave: the slot goes to the next waiter
      c.socket.write(name);
      await until(() => lb.rt.snapshot().listeners[0]!.queue!.cur === i + 1, 3000, `${name} to be queued`);
      waiters.push(c);
    }
    expect(rec.accepted).toBe(1);
    await h.close();
    await Promise.all(waiters.map((c, i) => c.waitFor((r) => r.toString() === `served ${names[i]}`, 15_000, `${names[i]} to be served`)));
    expect(order).toEqual(names);
    expect(rec.most).toBe(1);
    const waited = (await connLines(lb, 17)).filter((l) => l.fields.queued_ms !== undefined);
    expect(waited).toHaveLength(16);
    expect(regionsOf(waited)).toEqual(new Set([0, 1]));
  }, 40_000);

  it('health checks run once per interval for the process, not once per worker', async () => {
    const be = await serve('checked', (s) => {
      s.resume();
      s.on('end', () => s.end());
    });
    await startLb(webDoc([{ backends: [at(be.port)], health: { interval: '200ms', timeout: '150ms', rise: 1, fall: 1 } }], {}, W));
    await until(() => be.accepted >= 2, 3000, 'the first checks');
    const from = be.acceptTimes.length;
    const t0 = performance.now();
    await sleep(2400); // the measurement window itself: checks have no event to wait for
    const elapsed = performance.now() - t0;
    const times = be.acceptTimes.slice(from);
    const gaps = times.slice(1).map((t, i) => t - times[i]!).sort((x, y) => x - y);
    // One checker: about elapsed/200 checks, spaced by the interval. One per worker would be twice that,
    // and half the gaps would be near 0.
    expect(times.length).toBeLessThanOrEqual(Math.ceil(elapsed / 200) + 1);
    expect(times.length).toBeGreaterThanOrEqual(5);
    expect(gaps[Math.floor(gaps.length / 2)]!).toBeGreaterThan(150);
  });

  it('disable from the control port reaches both workers before it answers: the next 40 connections avoid the channel', async () => {
    const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(a.port), at(b.port)] }], {}, W));
    for (let i = 0; i < 6; i++) await ask(lb.port(), `warm ${i}`);
    expect(a.accepted).toBe(3);
    expect((await execute(lb.rt, admin, 'disable web 0 0')).text).toBe('channel 0 disabled');
    const seen: string[] = [];
    for (let batch = 0; batch < 4; batch++) {
      const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => ask(lb.port(), `after ${batch}.${i}`)));
      seen.push(...answers.map(backendOf));
    }
    expect(count(seen)).toEqual({ b: 40 });
    expect(a.accepted).toBe(3);
    const after = (await connLines(lb, 46)).slice(6);
    expect(regionsOf(after)).toEqual(new Set([0, 1]));
  });

  it('counters are exact sums over both workers: connections and bytes equal what the backends counted', async () => {
    const echo = (s: import('node:net').Socket): void => {
      s.on('data', (c: Buffer) => s.write(c));
      s.on('end', () => s.end());
    };
    const [a, b] = await Promise.all([countingBackend('a', echo), countingBackend('b', echo)]);
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(a.port), at(b.port)] }], {}, W));
    let sentByClients = 0;
    for (let batch = 0; batch < 8; batch++) {
      await Promise.all(
        Array.from({ length: 5 }, async (_, i) => {
          const n = 1 + (batch * 5 + i) * 997;
          sentByClients += n;
          const c = await connectClient(lb.port());
          c.socket.write(Buffer.alloc(n, 0x61 + i));
          await c.waitFor((r) => r.length >= n, 5000, `the echo of ${n} bytes`);
          c.socket.end();
          await within(c.ended, 5000, 'the echo FIN');
          await c.close();
        }),
      );
    }
    await connLines(lb, 40);
    await until(() => a.sockets.size === 0 && b.sockets.size === 0, 3000, 'the backends to see every connection close');
    const snap = lb.rt.snapshot();
    const l = snap.listeners[0]!;
    const [sa, sb] = l.groups[0]!.backends;
    for (const [s, be] of [[sa!, a], [sb!, b]] as const) {
      expect({ total: s.total, attempts: s.attempts, sent: s.sent, rcvd: s.rcvd, cur: s.cur }).toEqual({
        total: be.accepted,
        attempts: be.accepted,
        sent: be.bytesIn,
        rcvd: be.bytesOut,
        cur: 0,
      });
    }
    expect(a.accepted + b.accepted).toBe(40);
    expect(a.bytesIn + b.bytesIn).toBe(sentByClients);
    expect({ total: l.total, sent: l.sent, rcvd: l.rcvd, cur: l.cur }).toEqual({ total: 40, sent: sentByClients, rcvd: a.bytesOut + b.bytesOut, cur: 0 });
    const info = renderInfo(snap);
    expect(info).toContain('Workers: 2\n');
    expect(info).toContain('CumConns: 40\n');
    expect(info).toContain(`BytesIn: ${sentByClients}\n`);
    const mrtg = (await execute(lb.rt, admin, 'mrtg-bytes web 0 1')).text.split('\n');
    expect(mrtg.slice(0, 2).map(Number)).toEqual([b.bytesOut, b.bytesIn]);
    expect(regionsOf(lb.logs.all('conn'))).toEqual(new Set([0, 1]));
  });

  it('20 SIGHUP reloads under load (the file alternates between two valid configs): no connection fails', async () => {
    const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
    const file = path.join(dir, 'lb.toml');
    const config = (k: number): string =>
      [
        '[global]',
        'workers = 2',
        'drain_timeout = "5s"',
        '[listeners.web]',
        'listen = "127.0.0.1:0"',
        `connect_timeout = "${k === 0 ? '2s' : '3s'}"`,
        '[[listeners.web.groups]]',
        `policy = "${k === 0 ? 'rr' : 'first'}"`,
        `backends = ${JSON.stringify(k === 0 ? [at(a.port), at(b.port)] : [at(b.port), at(a.port)])}`,
        '',
      ].join('\n');
    writeFileSync(file, config(0));
    const lb = await spawnLb(['run', file]);
    const port = lb.ports.web!;
    let stop = false;
    let ok = 0;
    const failures: string[] = [];
    const loop = async (id: number): Promise<void> => {
      for (let i = 0; i < 5000 && !stop; i++) {
        try {
          const answer = await ask(port, `ping ${id}.${i}`, 5000);
          if (answer === `[a] ping ${id}.${i}` || answer === `[b] ping ${id}.${i}`) ok++;
          else failures.push(`unexpected answer ${JSON.stringify(answer)}`);
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
    };
    const loops = [0, 1, 2, 3].map(loop);
    for (let i = 1; i <= 20; i++) {
      writeFileSync(file, config(i % 2));
      lb.proc.kill('SIGHUP');
      await lb.logs.waitFor('reloaded', { count: i, ms: 10_000 });
    }
    stop = true;
    await within(Promise.all(loops), 20_000, 'the load loops to stop');
    expect(failures).toEqual([]);
    expect(lb.logs.all('reload-failed')).toHaveLength(0);
    expect(ok).toBeGreaterThan(40);
    // The last file (k = 0: rr over a, b) is the one running.
    const last = [await ask(port, 'x'), await ask(port, 'y')].map(backendOf).sort();
    expect(last).toEqual(['a', 'b']);
  }, 90_000);

  it('SIGTERM drains both workers: 16 open connections still relay, complete, and lb exits 0', async () => {
    const echo = await echoServer('e');
    const file = path.join(dir, 'lb.toml');
    writeFileSync(
      file,
      ['[global]', 'workers = 2', 'drain_timeout = "10s"', '[listeners.web]', 'listen = "127.0.0.1:0"', '[[listeners.web.groups]]', `backends = ["${at(echo.port)}"]`, ''].join('\n'),
    );
    const lb = await spawnLb(['run', file]);
    const open: TestClient[] = [];
    for (let i = 0; i < 16; i++) {
      const c = await connectClient(lb.ports.web!);
      expect(await c.request(`before ${i}`)).toBe(`before ${i}`);
      open.push(c);
    }
    lb.proc.kill('SIGTERM');
    await lb.logs.waitFor('stopping', { ms: 5000 });
    await lb.logs.waitFor('draining', { ms: 5000 });
    for (const [i, c] of open.entries()) expect(await c.request(`during ${i}`, 5000)).toBe(`during ${i}`);
    expect(lb.proc.exitCode).toBeNull();
    const t = Date.now();
    for (const c of open) {
      c.socket.end();
      await within(c.ended, 5000, 'the echo FIN');
    }
    expect(await within(lb.exited, 5000, 'lb to exit after the last connection')).toEqual({ code: 0, signal: null });
    expect(Date.now() - t).toBeLessThan(4000); // did not sit out the 10 s drain
    const conns = lb.logs.all('conn');
    expect(conns).toHaveLength(16);
    expect(conns.every((l) => l.fields.end === 'client-close')).toBe(true);
    expect(regionsOf(conns)).toEqual(new Set([0, 1]));
    expect(lb.logs.all('drain-timeout')).toHaveLength(0);
  }, 40_000);
});

describe('workers = 2: a worker that dies', () => {
  let hooks: string | undefined;
  beforeEach(() => {
    hooks = process.env.LB_TEST_HOOKS;
    process.env.LB_TEST_HOOKS = '1';
  });
  afterEach(() => {
    if (hooks === undefined) delete process.env.LB_TEST_HOOKS;
    else process.env.LB_TEST_HOOKS = hooks;
  });

  /** The `show info` figures of an in-process lb. */
  function info(lb: InProcessLb): Record<string, string> {
    return Object.fromEntries(renderInfo(lb.rt.snapshot()).split('\n').map((line) => line.split(': ') as [string, string]));
  }

  function totals(lb: InProcessLb) {
    const l = lb.rt.snapshot().listeners[0]!;
    const b = l.groups[0]!.backends[0]!;
    return { total: l.total, sent: l.sent, rcvd: l.rcvd, bTotal: b.total, bAttempts: b.attempts, bSent: b.sent, bRcvd: b.rcvd };
  }

  it('is replaced (Workers: 2, WorkerRestarts: 1), its slots are given back, its counts survive, serving goes on', async () => {
    const e = await namedEcho('e');
    const lb = await startLb(webDoc([{ backends: [at(e.port)] }], {}, W));
    for (let i = 0; i < 20; i++) expect(backendOf(await ask(lb.port(), `warm ${i}`))).toBe('e');
    const open: TestClient[] = [];
    for (let i = 0; i < 16; i++) open.push((await held(lb.port(), `held ${i}`)).c);
    await connLines(lb, 20);
    expect(info(lb)).toMatchObject({ Workers: '2', WorkerRestarts: '0' });
    // The open connections' bytes are published while they run (every 200 ms): let that happen first.
    const said = Array.from({ length: 20 }, (_, i) => `warm ${i}`.length).reduce((x, y) => x + y, 0) + Array.from({ length: 16 }, (_, i) => `held ${i}`.length).reduce((x, y) => x + y, 0);
    await until(() => totals(lb).sent === said, 3000, `the open connections' ${said} bytes to be published`);
    const before = totals(lb);

    await lb.rt.crashWorker(0);
    await lb.logs.waitFor('worker-restart', { ms: 5000 });
    await until(() => info(lb).Workers === '2', 10_000, 'the replacement worker to be up');
    expect(info(lb)).toMatchObject({ Workers: '2', WorkerRestarts: '1' });
    const died = lb.logs.all('worker-died');
    expect(died).toHaveLength(1);
    expect(died[0]!.fields.stack).toContain('test hook');

    // Totals never go down: what the dead worker counted is still there.
    const after = totals(lb);
    for (const k of Object.keys(before) as (keyof typeof before)[]) expect(after[k], k).toBeGreaterThanOrEqual(before[k]);

    // The dead worker's connections are gone and their slots given back: cur = what is still open.
    const alive = await Promise.all(
      open.map((c, i) =>
        c.request(`still ${i}`, 2000).then(
          () => c,
          () => null,
        ),
      ),
    );
    const survivors = alive.filter((c): c is TestClient => c !== null);
    expect(survivors.length).toBeLessThan(open.length); // worker 0 held some of them
    await until(() => lb.listener().state.cur === survivors.length, 3000, `listener cur to be ${survivors.length}`);
    await until(() => e.current === survivors.length, 3000, `the backend to see ${survivors.length} connections`);
    expect(backendSnap(lb, 0, 0).cur).toBe(survivors.length);

    // Both workers serve again.
    const mark = lb.logs.mark();
    for (let i = 0; i < 20; i++) expect(backendOf(await ask(lb.port(), `again ${i}`))).toBe('e');
    await lb.logs.waitFor('conn', { from: mark, count: 20 });
    const again = lb.logs.lines.slice(mark).filter((l) => l.event === 'conn');
    expect(regionsOf(again)).toEqual(new Set([0, 1]));
    const end = totals(lb);
    expect(end.total).toBeGreaterThanOrEqual(before.total + 20);
    expect(end.bTotal).toBeGreaterThanOrEqual(before.bTotal + 20);
  }, 40_000);

  it('killed mid-load, it loses only its own connections: four tight connect loops lose at most the one each had in flight there', async () => {
    const e = await namedEcho('e');
    const lb = await startLb(webDoc([{ backends: [at(e.port)] }], {}, W));
    let stop = false;
    let ok = 0;
    const failures: string[] = [];
    const okAfter: number[] = [0, 0, 0, 0];
    let crashed = false;
    const loop = async (id: number): Promise<void> => {
      for (let i = 0; i < 5000 && !stop; i++) {
        try {
          expect(backendOf(await ask(lb.port(), `${id}.${i}`, 3000))).toBe('e');
          ok++;
          if (crashed) okAfter[id]!++;
        } catch (err) {
          failures.push(`${id}.${i}: ${(err as Error).message}`);
        }
      }
    };
    const loops = [0, 1, 2, 3].map(loop);
    await until(() => ok >= 100, 10_000, '100 answers before the crash');
    await lb.rt.crashWorker(0);
    crashed = true;
    await lb.logs.waitFor('worker-restart', { ms: 5000 });
    await until(() => okAfter.every((n) => n >= 50), 20_000, 'every loop to be answered 50 times after the crash');
    stop = true;
    await within(Promise.all(loops), 10_000, 'the loops to stop');
    // A connection in flight on the dying worker (accepted, or in its listening socket's backlog) is
    // lost; each loop has one connection at a time, so at most one per loop.
    expect(failures.length, failures.join('; ')).toBeLessThanOrEqual(4);
  }, 60_000);

  it('connection ids stay unique after a worker is replaced', async () => {
    const e = await namedEcho('e');
    const lb = await startLb(webDoc([{ backends: [at(e.port)] }], {}, W));
    for (let i = 0; i < 20; i++) await ask(lb.port(), `warm ${i}`);
    const first = await connLines(lb, 20);
    expect(regionsOf(first)).toContain(0);
    await lb.rt.crashWorker(0);
    await lb.logs.waitFor('worker-restart', { ms: 5000 });
    await until(() => lb.rt.snapshot().workers === 2, 10_000, 'the replacement worker to be up');
    for (let i = 0; i < 20; i++) await ask(lb.port(), `again ${i}`);
    const all = await connLines(lb, 40);
    expect(all.filter((l) => regionOf(l.fields.id!) === 0).length).toBeGreaterThan(0);
    const ids = all.map((l) => l.fields.id);
    const dup = ids.filter((id, i) => ids.indexOf(id) !== i);
    expect(dup, `ids logged twice: ${dup.join(', ')}`).toEqual([]);
  }, 40_000);
});
