// Active health checks end to end (issue 5): TCP connect checks with rise/fall, send/expect (substring
// and /regex/), L7TOUT and L7RSP, the `port` override, operator DIS versus checks, the log line of every
// state change, the `show stat` columns, data-path failures feeding the same state machine, and the
// jitter of the first checks. Small timings (interval 100 ms); every wait is bounded.

import { afterEach, describe, expect, it, vi } from 'vitest';
import { execute, type Session } from '../../src/control/commands.ts';
import { renderStatCsv } from '../../src/stats/render.ts';
import { ask, backendOf, connectClient, deadHost, refusedPort, until } from '../helpers/backends.ts';
import {
  closeHealthServers,
  namedEcho,
  parseStatCsv,
  replyServer,
  silentServer,
  sleep,
  type Backend,
} from '../helpers/health.ts';
import { at, cleanup, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';

afterEach(async () => {
  vi.restoreAllMocks();
  await cleanup();
  await closeHealthServers();
});

const FAST = { interval: '100ms', timeout: '80ms', rise: 2, fall: 2 };

const admin = (): Session => ({ listener: 'web', group: 0, level: 'admin', prompt: false });

/** The `show` status (ENA/dis/DIS/DRN) and check block of backend `index` of group `group`. */
function status(lb: InProcessLb, index = 0, group = 0) {
  const b = lb.rt.snapshot().listeners[0]!.groups[group]!.backends[index]!;
  return { status: b.status, check: b.check };
}

function waitStatus(lb: InProcessLb, want: string, ms: number, index = 0, group = 0): Promise<void> {
  return until(() => status(lb, index, group).status === want, ms, `backend ${group}/${index} to be ${want} (is ${status(lb, index, group).status})`, 5);
}

function statRow(lb: InProcessLb, backend: string): Record<string, string> {
  const row = parseStatCsv(renderStatCsv(lb.rt.snapshot())).find((r) => r.svname === backend);
  if (!row) throw new Error(`no show stat row for ${backend}`);
  return row;
}

describe('TCP connect checks', () => {
  it('a stopped backend goes dis after fall checks, and ENA again after rise checks once it is back', async () => {
    const a = await namedEcho('a');
    const port = a.port;
    const lb = await startLb(webDoc([{ backends: [at(port)], health: FAST }]));
    // First check within the first interval; it passes (L4OK), the backend stays ENA.
    await until(() => status(lb).check?.status === 'L4OK', 1000, 'the first passing check');
    expect(status(lb).status).toBe('ENA');
    expect(backendOf(await ask(lb.port(), 'hi'))).toBe('a');

    // Stop it: refused checks (L4CON). fall = 2 at 100 ms: down within ~200 ms (+ one interval of phase).
    const mark = lb.logs.mark();
    await a.close();
    const stopped = Date.now();
    await waitStatus(lb, 'dis', 1500);
    const downAfter = Date.now() - stopped;
    expect(downAfter).toBeGreaterThanOrEqual(80); // not on the first failure: at least one interval apart
    expect(downAfter).toBeLessThan(700);
    const down = await lb.logs.waitFor({ event: 'health', to: 'DOWN' }, { from: mark });
    expect(down.level).toBe('warn');
    expect(down.fields).toMatchObject({
      listener: 'web',
      group: '0',
      backend: at(port),
      from: 'UP',
      to: 'DOWN',
      status: 'L4CON',
      reason: 'ECONNREFUSED',
      by: 'check',
    });
    expect(Number(down.fields.check_ms)).toBeGreaterThanOrEqual(0);
    expect(Number(down.fields.check_ms)).toBeLessThan(80);
    expect(status(lb).check).toMatchObject({ status: 'L4CON', downs: 1 });
    expect(status(lb).check!.failed).toBeGreaterThanOrEqual(2);

    // While down it gets no clients: with no other backend the client is closed at once.
    const st = lb.listener().state.groups[0]!.backends[0]!;
    const attempts = st.attempts;
    await expect(ask(lb.port(), 'nobody', 1000)).rejects.toThrow();
    expect(st.attempts).toBe(attempts);

    // Back on the same port: up again after rise = 2 passing checks.
    const mark2 = lb.logs.mark();
    await namedEcho('a2', port);
    const back = Date.now();
    await waitStatus(lb, 'ENA', 1500);
    const upAfter = Date.now() - back;
    expect(upAfter).toBeGreaterThanOrEqual(80); // two checks, one interval apart
    expect(upAfter).toBeLessThan(700);
    const up = await lb.logs.waitFor({ event: 'health', to: 'UP' }, { from: mark2 });
    expect(up.level).toBe('info');
    expect(up.fields).toMatchObject({ backend: at(port), from: 'DOWN', to: 'UP', status: 'L4OK', by: 'check' });
    expect(up.fields.reason).toBeUndefined();
    expect(Number(up.fields.check_ms)).toBeGreaterThanOrEqual(0);
    expect(backendOf(await ask(lb.port(), 'again'))).toBe('a2');
    // Exactly one line per transition.
    expect(lb.logs.all('health').map((l) => `${l.fields.from}>${l.fields.to}`)).toEqual(['UP>DOWN', 'DOWN>UP']);
  });

  it('show stat: chkfail, chkdown, lastchg, check_status, check_duration, check_rise/fall are filled', async () => {
    const dead = await refusedPort();
    const ok = await namedEcho('ok');
    const lb = await startLb(webDoc([{ backends: [at(dead), at(ok.port)], health: { ...FAST, rise: 3, fall: 2 } }]));
    await waitStatus(lb, 'dis', 1500, 0);
    await until(() => status(lb, 1).check?.status === 'L4OK', 1000, 'a passing check of ok');
    const d = statRow(lb, at(dead));
    expect(d.status).toBe('DOWN');
    expect(d.lb_state).toBe('dis');
    expect(d.check_status).toBe('L4CON');
    expect(Number(d.chkfail)).toBeGreaterThanOrEqual(2);
    expect(d.chkdown).toBe('1');
    expect(d.lastchg).toMatch(/^\d+$/);
    expect(Number(d.lastchg)).toBeLessThan(3);
    expect(d.check_duration).toMatch(/^\d+$/);
    expect([d.check_rise, d.check_fall]).toEqual(['3', '2']);
    const o = statRow(lb, at(ok.port));
    expect(o.status).toBe('UP');
    expect([o.check_status, o.chkfail, o.chkdown]).toEqual(['L4OK', '0', '0']);
    // The balance-style `show` has the check column too.
    const show = (await execute(lb.rt, admin(), 'show')).text;
    const row = show.split('\n').find((l) => l.includes(` ${dead} `));
    expect(row).toMatch(/^\s*0\s+RR\s+0\s+dis\s+127\.0\.0\.1\s+\d+\s.*\sL4CON\s+127\.0\.0\.1:\d+$/); // then its name
  });

  it('a backend without health config has empty check columns and is never checked', async () => {
    const plain = await namedEcho('plain');
    const lb = await startLb(webDoc([{ backends: [at(plain.port)] }]));
    await sleep(250);
    expect(plain.accepted).toBe(0);
    const r = statRow(lb, at(plain.port));
    expect([r.check_status, r.chkfail, r.chkdown, r.check_duration]).toEqual(['', '', '', '']);
  });
});

describe('send / expect checks', () => {
  it('substring: PING\\r\\n is sent, a PONG reply passes (L7OK)', async () => {
    const b = await replyServer('pong', '+PONG\r\n');
    const lb = await startLb(webDoc([{ backends: [at(b.port)], health: { ...FAST, send: 'PING\r\n', expect: 'PONG' } }]));
    await until(() => status(lb).check?.status === 'L7OK', 1000, 'an L7OK check');
    expect(b.received().startsWith('PING\r\n')).toBe(true);
    await sleep(250);
    expect(status(lb).status).toBe('ENA');
    expect(status(lb).check!.failed).toBe(0);
  });

  it('substring: a wrong banner (then close) fails with L7RSP and takes the backend down', async () => {
    const b = await replyServer('wrong', '-ERR not ready\r\n', { onConnect: true, close: true });
    const lb = await startLb(webDoc([{ backends: [at(b.port)], health: { ...FAST, expect: '+OK' } }]));
    await waitStatus(lb, 'dis', 1500);
    expect(status(lb).check!.status).toBe('L7RSP');
    const down = await lb.logs.waitFor({ event: 'health', to: 'DOWN' });
    expect(down.fields).toMatchObject({ status: 'L7RSP', reason: 'reply did not match', by: 'check', backend: at(b.port) });
  });

  it('/regex/flags: a matching banner passes (L7OK), a non-matching one fails (L7RSP)', async () => {
    const good = await replyServer('good', '+ok POP3 ready\r\n', { onConnect: true });
    const bad = await replyServer('bad', 'HTTP/1.0 500 oops\r\n', { onConnect: true, close: true });
    const lb = await startLb(
      webDoc([{ backends: [at(good.port), at(bad.port)], health: { ...FAST, expect: '/^\\+OK\\b/i' } }]),
    );
    await waitStatus(lb, 'dis', 1500, 1);
    await until(() => status(lb, 0).check?.status === 'L7OK', 1000, 'an L7OK check of good');
    expect(status(lb, 0).status).toBe('ENA');
    expect(status(lb, 1).check!.status).toBe('L7RSP');
    // Only the matching one gets clients: each sees its banner.
    for (let i = 0; i < 3; i++) {
      const c = await connectClient(lb.port());
      await c.waitFor((r) => r.toString().includes('\r\n'), 1000, 'a banner');
      expect(c.text()).toBe('+ok POP3 ready\r\n');
      await c.close();
    }
    expect(lb.logs.all({ event: 'health', backend: at(good.port) })).toEqual([]);
  });

  it('a backend that accepts but never answers fails with L7TOUT after the check timeout', async () => {
    const mute = await silentServer('mute');
    const lb = await startLb(webDoc([{ backends: [at(mute.port)], health: { ...FAST, send: 'PING\r\n', expect: 'PONG' } }]));
    await waitStatus(lb, 'dis', 2000);
    expect(status(lb).check!.status).toBe('L7TOUT');
    const down = await lb.logs.waitFor({ event: 'health', to: 'DOWN' });
    expect(down.fields).toMatchObject({ status: 'L7TOUT', reason: 'timeout' });
    // The duration reported is the check timeout (80 ms), not the interval.
    expect(Number(down.fields.check_ms)).toBeGreaterThanOrEqual(75);
    expect(Number(down.fields.check_ms)).toBeLessThan(250);
    expect(mute.received()).toContain('PING\r\n');
  });

  it('non-ASCII send/expect: the text is sent as UTF-8 and a UTF-8 reply containing it passes', async () => {
    // TOML strings are UTF-8: "état?" goes out as UTF-8 bytes, so a backend answering "prêt" in UTF-8
    // must match expect = "prêt".
    const b = await replyServer('utf8', 'prêt\r\n');
    const lb = await startLb(webDoc([{ backends: [at(b.port)], health: { ...FAST, send: 'état?\n', expect: 'prêt' } }]));
    await until(() => b.accepted >= 3, 1500, 'three checks');
    expect(Buffer.from(b.received(), 'latin1').toString('utf8')).toContain('état?\n');
    expect(status(lb).check!.status).toBe('L7OK');
    expect(status(lb).status).toBe('ENA');
  });

  it('a plain TCP check against a silent backend passes (L4OK: connect only, nothing sent), once per interval', async () => {
    const mute = await silentServer('mute');
    const lb = await startLb(webDoc([{ backends: [at(mute.port)], health: FAST }]));
    await until(() => mute.accepted >= 1, 1500, 'a first check');
    const first = mute.accepted;
    await sleep(500);
    const inHalfASecond = mute.accepted - first;
    expect(inHalfASecond).toBeGreaterThanOrEqual(3); // ~5 at 100 ms
    expect(inHalfASecond).toBeLessThanOrEqual(7);
    expect(status(lb)).toMatchObject({ status: 'ENA', check: { status: 'L4OK', failed: 0 } });
    expect(mute.received()).toBe('');
  });

  it('a wrong banner on a connection kept open also fails the check (no match before the timeout)', async () => {
    const b = await replyServer('wrong-open', '220 not what you expect\r\n', { onConnect: true });
    const lb = await startLb(webDoc([{ backends: [at(b.port)], health: { ...FAST, expect: '+OK' } }]));
    await waitStatus(lb, 'dis', 2000);
    // HAProxy reports a reply that did not match before the check timeout as L7TOUT too.
    expect(['L7RSP', 'L7TOUT']).toContain(status(lb).check!.status);
  });
});

describe('health port override', () => {
  it('checks another port than the traffic port; that port failing takes the backend down', async () => {
    const traffic = await namedEcho('traffic');
    const checkPort = await silentServer('check');
    const lb = await startLb(
      webDoc([{ backends: [{ host: '127.0.0.1', port: traffic.port, health: { port: checkPort.port } }], health: FAST }]),
    );
    await until(() => checkPort.accepted >= 2, 1500, 'checks on the health port');
    expect(traffic.accepted).toBe(0); // the traffic port is not checked
    expect(status(lb).status).toBe('ENA');
    await checkPort.close();
    await waitStatus(lb, 'dis', 1500);
    // The traffic port still works, but the backend is down by its health port.
    expect(status(lb).check!.status).toBe('L4CON');
    expect(traffic.accepted).toBe(0);
  });

  it('health = { enabled = false } on one backend: not checked, never dis by checks', async () => {
    const checked = await silentServer('checked');
    const unchecked = await silentServer('unchecked');
    const lb = await startLb(
      webDoc([
        {
          backends: [at(checked.port), { host: '127.0.0.1', port: unchecked.port, health: { enabled: false } }],
          health: FAST,
        },
      ]),
    );
    await until(() => checked.accepted >= 2, 1500, 'checks of the checked backend');
    expect(unchecked.accepted).toBe(0);
    expect(status(lb, 1).check).toBeNull();
  });
});

describe('operator state versus checks', () => {
  it('disable (DIS) is never undone by passing checks, and a DIS backend is not checked; enable restarts checks', async () => {
    const a = await silentServer('a');
    const lb = await startLb(webDoc([{ backends: [at(a.port)], health: FAST }]));
    await until(() => a.accepted >= 2, 1500, 'two checks');
    expect(status(lb).status).toBe('ENA');

    expect((await execute(lb.rt, admin(), 'disable web 0 0')).text).toBe('channel 0 disabled');
    // A check already in flight at the moment of disable may still connect, however late a loaded machine
    // lets it: at most that one. Checks going on would add one per 100 ms interval.
    const seen = a.accepted;
    await sleep(400); // four intervals
    expect(a.accepted).toBeLessThanOrEqual(seen + 1);
    const quiet = a.accepted;
    expect(status(lb).status).toBe('DIS');
    expect(lb.logs.all('health')).toEqual([]);
    expect(statRow(lb, at(a.port)).status).toBe('MAINT');

    expect((await execute(lb.rt, admin(), 'enable web 0 0')).text).toBe('channel 0 enabled');
    await until(() => a.accepted >= quiet + 2, 1500, 'checks to restart after enable');
    expect(status(lb).status).toBe('ENA');
  });

  it('a backend configured enabled = false is not checked until enabled', async () => {
    const a = await silentServer('a');
    const lb = await startLb(webDoc([{ backends: [{ host: '127.0.0.1', port: a.port, enabled: false }], health: FAST }]));
    await sleep(350);
    expect(a.accepted).toBe(0);
    expect(status(lb).status).toBe('DIS');
    await execute(lb.rt, admin(), 'enable web 0 0');
    await until(() => a.accepted >= 1, 1500, 'a check after enable');
    expect(status(lb).status).toBe('ENA');
  });

  it('a dis backend disabled and re-enabled stays dis until rise checks pass (health survives the operator)', async () => {
    const dead = await refusedPort();
    const lb = await startLb(webDoc([{ backends: [at(dead)], health: FAST }]));
    await waitStatus(lb, 'dis', 1500);
    await execute(lb.rt, admin(), 'disable web 0 0');
    expect(status(lb).status).toBe('DIS');
    await execute(lb.rt, admin(), 'enable web 0 0');
    expect(status(lb).status).toBe('dis');
    await sleep(300);
    expect(status(lb).status).toBe('dis');
  });
});

describe('health config changed at runtime', () => {
  it('turning checks off (reload without health) does not leave a down backend dis for ever', async () => {
    // HAProxy: a server whose checks are disabled is "unchecked" and considered UP.
    const a = await namedEcho('a');
    const port = a.port;
    const withChecks = webDoc([{ backends: [at(port)], health: FAST }]);
    const lb = await startLb(withChecks);
    await a.close();
    await waitStatus(lb, 'dis', 1500);
    await namedEcho('a-again', port); // reachable again, but nothing checks it any more after the reload
    await lb.apply(webDoc([{ backends: [at(port)] }]));
    await sleep(300);
    expect(status(lb).check).toBeNull();
    expect(status(lb).status).toBe('ENA');
  });

  it('checks turned on by a reload start for the kept backend, and a dead one goes down', async () => {
    const dead = await refusedPort();
    const ok = await namedEcho('ok');
    const lb = await startLb(webDoc([{ backends: [at(dead), at(ok.port)] }]));
    expect(status(lb, 0).check).toBeNull();
    await lb.apply(webDoc([{ backends: [at(dead), at(ok.port)], health: FAST }]));
    await waitStatus(lb, 'dis', 1500, 0);
    expect(status(lb, 1).status).toBe('ENA');
  });
});

describe('data-path connect failures feed the health state machine', () => {
  /**
   * A refused backend first in a `first` group, an ok one second, and one client. The checks go to a
   * healthy health port and start late (first check at 99.9% of 10 s), so the only failure the state
   * machine sees is the one on the data path.
   */
  async function oneRefusedConnect(fall: number) {
    const healthPort = await silentServer('health-port');
    const dead = await refusedPort();
    const ok = await namedEcho('ok');
    vi.spyOn(Math, 'random').mockReturnValue(0.999);
    const lb = await startLb(
      webDoc([
        {
          policy: 'first',
          backends: [{ host: '127.0.0.1', port: dead, health: { port: healthPort.port } }, at(ok.port)],
          health: { interval: '10s', timeout: '1s', rise: 2, fall },
        },
      ]),
    );
    vi.restoreAllMocks();
    expect(backendOf(await ask(lb.port(), 'hi'))).toBe('ok');
    return { lb, dead, healthPort };
  }

  it('a refused client connect counts as a failed check (fall = 1: down by traffic, logged)', async () => {
    const { lb, dead, healthPort } = await oneRefusedConnect(1);
    const down = await lb.logs.waitFor({ event: 'health', to: 'DOWN' });
    expect(down.fields).toMatchObject({ backend: at(dead), from: 'UP', to: 'DOWN', status: 'L4CON', reason: 'ECONNREFUSED', by: 'traffic' });
    expect(status(lb)).toMatchObject({ status: 'dis', check: { status: 'L4CON', failed: 1, downs: 1 } });
    expect(healthPort.accepted).toBe(0);
  });

  it('with fall = 3 one data-path failure is counted (chkfail 1) but does not take it down by itself', async () => {
    const { lb } = await oneRefusedConnect(3);
    const st = lb.listener().state.groups[0]!.backends[0]!;
    expect(st.check.failedChecks).toBe(1);
    expect(st.check.up).toBe(true);
    expect(lb.logs.all('health')).toEqual([]);
  });
});

describe('check scheduling', () => {
  it('checks run in parallel: a check hanging on a SYN-dropping host does not delay the others', async () => {
    const dead = await deadHost();
    const a = await namedEcho('a');
    const lb = await startLb(
      webDoc([{ backends: [at(dead.port), at(a.port)], health: { interval: '100ms', timeout: '900ms', rise: 2, fall: 2 } }]),
    );
    await until(() => a.accepted >= 1, 1000, 'a first check of a');
    await a.close();
    const t0 = Date.now();
    await waitStatus(lb, 'dis', 1500, 1);
    // fall × interval, not stuck behind the dead host's 900 ms check timeouts.
    expect(Date.now() - t0).toBeLessThan(600);
    await waitStatus(lb, 'dis', 3000, 0);
    expect(status(lb, 0).check!.status).toBe('L4TOUT');
  });

  it('the first checks of 10 backends are spread over the first interval (jitter), not all at once', async () => {
    const backends: Backend[] = [];
    for (let i = 0; i < 10; i++) backends.push(await silentServer(`b${i}`));
    const { performance } = await import('node:perf_hooks');
    await startLb(webDoc([{ backends: backends.map((b) => at(b.port)), health: { interval: '1s', timeout: '500ms' } }]));
    const t0 = performance.now(); // checks are scheduled once every worker is serving
    await until(() => backends.every((b) => b.accepted >= 1), 2500, 'a first check on every backend');
    const firsts = backends.map((b) => b.acceptTimes[0]! - t0).sort((x, y) => x - y);
    console.log(`first checks (ms after start): ${firsts.map((t) => Math.round(t)).join(' ')}`);
    // All within the first interval (plus scheduling slack) ...
    expect(firsts.at(-1)!).toBeLessThan(1300);
    // ... and not a thundering herd: spread over more than 10 ms (for uniform jitter, over ~800 ms).
    expect(firsts.at(-1)! - firsts[0]!).toBeGreaterThan(100);
    const buckets = new Set(firsts.map((t) => Math.floor(t / 10)));
    expect(buckets.size).toBeGreaterThan(3);
    // Each backend is then checked once per interval, not more.
    await sleep(300);
    for (const b of backends) expect(b.accepted).toBeLessThanOrEqual(2);
  });
});
