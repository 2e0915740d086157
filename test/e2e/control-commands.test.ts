// Every control-port command against an in-process lb with real backends: replies, state changes and
// their effect on real traffic, explicit (`disable web 0 1`) and session (`use`/`group`) addressing,
// errors that leave the session usable, and `kill` stopping a CLI lb.

import { describe, expect, it } from 'vitest';
import { ask, backendOf, connectClient, echoServer, refusedPort, sinkServer, within, type TestClient } from '../helpers/backends.ts';
import { runLb } from '../helpers/cli.ts';
import {
  adminControl, testTokenFile, useControlScope, ctl, ERROR_LINE, lbCli, openSession, parseShow, SHOW_HEADER_BALANCE, showRow, startCliLb, startControlLb,
  UPTIME,
} from '../helpers/control.ts';
import { at, type InProcessLb } from '../helpers/lb.ts';
import { VERSION } from '../../src/version.ts';

const scope = useControlScope();

/** HAProxy's `show stat` columns 0..38 in its order (shared/reference/conventions.md §2). */
const HAPROXY_COLUMNS =
  'pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,' +
  'chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,' +
  'check_code,check_duration';

const COMMAND_NAMES = [
  'help', 'show', 'use', 'group', 'enable', 'disable', 'maxc', 'reset', 'create', 'assign', 'hash', 'rr', 'policy',
  'mrtg-bytes', 'mrtg-conns', 'version', 'quit', 'kill',
];

/**
 * web: group 0 rr [a, b], group 1 rr [c]; imap: group 0 rr [d, e]. Echo backends answer `[name] data`.
 * Control port on 127.0.0.1:0 at level admin (the helpers send `auth` with the test token).
 */
async function fixture() {
  const [a, b, c, d, e] = await Promise.all(['a', 'b', 'c', 'd', 'e'].map((n) => echoServer(n, { prefix: true })));
  const { lb, port } = await startControlLb({
    global: { access_log: true },
    control: adminControl(),
    listeners: {
      web: {
        listen: '127.0.0.1:0',
        connect_timeout: '1s',
        groups: [
          { policy: 'rr', backends: [at(a!.port), at(b!.port)] },
          { policy: 'rr', backends: [at(c!.port)] },
        ],
      },
      imap: { listen: '127.0.0.1:0', connect_timeout: '1s', groups: [{ policy: 'rr', backends: [at(d!.port), at(e!.port)] }] },
    },
  });
  expect(port).toBeGreaterThan(0);
  return { lb, cport: port, a: a!, b: b!, c: c!, d: d!, e: e! };
}

/** `n` sequential clients through `listener`; returns which echo backend answered each. */
async function route(lb: InProcessLb, n: number, listener = 'web'): Promise<string[]> {
  const seen: string[] = [];
  for (let i = 0; i < n; i++) seen.push(backendOf(await ask(lb.port(listener), `ping ${i}`)));
  return seen;
}

/** Waits until `count` connections have finished (their access-log lines), so the counters are final. */
function finished(lb: InProcessLb, count: number): Promise<unknown> {
  return lb.logs.waitFor('conn', { count });
}

/** Checks that every value of a `show` row ends where its header name ends (right-aligned columns). */
function expectAligned(header: string, row: string): void {
  for (const m of header.matchAll(/\S+/g)) {
    const end = m.index + m[0].length;
    expect(row[end - 1], `column ${m[0]} in ${JSON.stringify(row)}`).toMatch(/\S/);
    if (end < row.length) expect(row[end], `after column ${m[0]} in ${JSON.stringify(row)}`).toBe(' ');
  }
}

describe('read-only commands', () => {
  it('help and ? list every command, and every reply of a bare-LF script ends with a blank line and has no prompt', async () => {
    const { cport } = await fixture();
    const s = await openSession(cport);
    const help = await s.command('help');
    const lines = help.split('\n');
    expect(lines[0]).toBe('available commands (this session: admin):');
    for (const name of COMMAND_NAMES) {
      expect(lines.some((l) => l.startsWith(`  ${name}`)), `help lists ${name}:\n${help}`).toBe(true);
    }
    expect(lines.slice(1).every((l) => /^ {2}\S.* {2}\S/.test(l))).toBe(true);
    expect(await s.command('?')).toBe(help);
    await s.command('version');
    const raw = s.raw().toString('latin1');
    expect(raw).not.toMatch(/(^|\n)lb> /);
    expect(raw).not.toContain('\r');
    expect(raw.endsWith('\n\n')).toBe(true);
    expect(raw.split('\n\n')).toHaveLength(4); // three replies and nothing after the last blank line
  });

  it('show prints balance\'s table, one block per listener headed by its name and address; show LISTENER only that one', async () => {
    const { lb, cport, a, b, c, d, e } = await fixture();
    const show = await ctl(cport, 'show');
    const lines = show.split('\n');
    expect(lines).not.toContain('');
    expect(lines[0]).toMatch(new RegExp(`^listener web 127\\.0\\.0\\.1:${lb.port('web')}\\b`));
    expect(lines[1]!.startsWith(SHOW_HEADER_BALANCE)).toBe(true);
    expect(lines[5]).toMatch(new RegExp(`^listener imap 127\\.0\\.0\\.1:${lb.port('imap')}\\b`));
    expect(lines[6]!.startsWith(SHOW_HEADER_BALANCE)).toBe(true);
    expect(lines).toHaveLength(9);
    for (const row of [lines[2]!, lines[3]!, lines[4]!, lines[7]!, lines[8]!]) expectAligned(SHOW_HEADER_BALANCE, row);
    // The balance columns, in order: group, type, channel, state, address, port, c, totalc, maxc, sent, rcvd.
    expect(lines[2]!.slice(0, SHOW_HEADER_BALANCE.length)).toBe(
      `  0   RR  0 ENA        127.0.0.1 ${String(a.port).padStart(5)}    0           0    0           0           0`,
    );
    const rows = parseShow(show);
    expect([...rows.keys()]).toEqual(['web', 'imap']);
    expect(rows.get('web')!.map((r) => [r.grp, r.type, r.ch, r.state, r.ip, r.port])).toEqual([
      [0, 'RR', 0, 'ENA', '127.0.0.1', a.port],
      [0, 'RR', 1, 'ENA', '127.0.0.1', b.port],
      [1, 'RR', 0, 'ENA', '127.0.0.1', c.port],
    ]);
    expect(rows.get('imap')!.map((r) => r.port)).toEqual([d.port, e.port]);

    // Traffic shows up in c, totalc, sent and rcvd of the channel that carried it.
    const client = await connectClient(lb.port('web'));
    const answer = await client.request('hello');
    expect(backendOf(answer)).toBe('a');
    const live = showRow(await ctl(cport, 'show web'), 'web', 0, 0);
    expect(live).toMatchObject({ c: 1, totalc: 1, sent: 5, rcvd: answer.length });
    await client.close();
    await finished(lb, 1);
    expect(showRow(await ctl(cport, 'show'), 'web', 0, 0)).toMatchObject({ c: 0, totalc: 1, sent: 5, rcvd: answer.length });

    const only = await ctl(cport, 'show imap');
    expect([...parseShow(only).keys()]).toEqual(['imap']);
    expect(await ctl(cport, 'show nosuch')).toMatch(/^error: .*nosuch.* \[LB_CONTROL_BAD_ARGS\]$/);
  });

  it('show stat is CSV with HAProxy\'s columns 0..38 in order, FRONTEND/server/BACKEND rows and real counters', async () => {
    const { lb, cport, a } = await fixture();
    const answer = await ask(lb.port('web'), 'hello');
    expect(backendOf(answer)).toBe('a');
    await finished(lb, 1);
    await ctl(cport, 'disable web 0 1');
    const csv = await ctl(cport, 'show stat');
    const [header, ...rows] = csv.split('\n');
    expect(header!.startsWith('# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,')).toBe(true);
    const cols = header!.slice(2).split(',');
    expect(cols.slice(0, 39).join(',')).toBe(HAPROXY_COLUMNS);
    const parsed = rows.map((r) => {
      const f = r.split(',');
      expect(f, r).toHaveLength(cols.length);
      return Object.fromEntries(cols.map((c, i) => [c, f[i]!]));
    });
    const front = parsed.filter((r) => r.svname === 'FRONTEND');
    expect(front.map((r) => [r.pxname, r.type])).toEqual([['web', '0'], ['imap', '0']]);
    expect(front[0]).toMatchObject({ stot: '1', bin: '5', bout: String(answer.length), status: 'OPEN', pid: String(process.pid) });
    const server = parsed.find((r) => r.svname === at(a.port))!;
    expect(server).toMatchObject({ type: '2', status: 'UP', stot: '1', bin: '5', bout: String(answer.length), lbtot: '1', act: '1', bck: '0' });
    expect(parsed.filter((r) => r.type === '2' && r.status === 'MAINT').map((r) => r.lb_backend)).toEqual(['1']);
    const backends = parsed.filter((r) => r.svname === 'BACKEND');
    expect(backends.map((r) => [r.pxname, r.type])).toEqual([['web/0', '1'], ['web/1', '1'], ['imap/0', '1']]);
    expect(backends[0]).toMatchObject({ stot: '1', bin: '5', bout: String(answer.length) });
    expect(backends[1]).toMatchObject({ act: '0', bck: '1' }); // group 1 is the failover tier
  });

  it('show info gives HAProxy-style Key: value lines with a human uptime', async () => {
    const { lb, cport } = await fixture();
    await ask(lb.port('web'), 'x');
    await finished(lb, 1);
    const info = Object.fromEntries(
      (await ctl(cport, 'show info')).split('\n').map((l) => {
        const m = /^([A-Za-z_]+(?:\.[\w-]+)?): (.*)$/.exec(l); // Path.LISTENER: one line per listener
        expect(m, l).not.toBeNull();
        return [m![1]!, m![2]!];
      }),
    );
    expect(info).toMatchObject({ Name: 'lb', Version: VERSION, Pid: String(process.pid), CumConns: '1', Listeners: '2' });
    expect(info.Uptime).toMatch(UPTIME);
    expect(info.Uptime_sec).toMatch(/^\d+$/);
    expect(Object.keys(info).filter((k) => k.startsWith('Path.'))).toEqual(['Path.web', 'Path.imap']);
    expect(info['Path.web']).toMatch(/^(native accept \+ connect \+ splice|JS connect \+ (splice|JS relay) \(.+\))$/);
  });

  it('show json parses and carries the same counters', async () => {
    const { lb, cport } = await fixture();
    const answer = await ask(lb.port('imap'), 'abc');
    await finished(lb, 1);
    const snap = JSON.parse(await ctl(cport, 'show json')) as {
      version: string;
      listeners: { name: string; total: number; sent: number; rcvd: number; groups: { backends: { total: number; status: string }[] }[] }[];
    };
    expect(snap.version).toBe(VERSION);
    expect(snap.listeners.map((l) => l.name)).toEqual(['web', 'imap']);
    expect(snap.listeners[1]).toMatchObject({ total: 1, sent: 3, rcvd: answer.length });
    expect(snap.listeners[1]!.groups[0]!.backends.map((b) => b.total)).toEqual([1, 0]);
  });

  it('show config prints the running table as TOML that lb --check accepts, runtime changes included', async () => {
    const { cport, b } = await fixture();
    const scratch = scope.scratch();
    const before = scratch.write('before.toml', await ctl(cport, 'show config'));
    const r1 = await runLb(['--check', before]);
    expect(r1.stderr).toBe('');
    expect(r1.code).toBe(0);
    expect(r1.stdout).toContain('ok (2 listeners, 3 groups, 5 backends)');

    expect(await ctl(cport, 'disable web 0 1')).toBe('channel 1 disabled');
    expect(await ctl(cport, `create imap 0 127.0.0.1 ${b.port}`)).toBe('channel 2 created');
    expect(await ctl(cport, 'hash imap 0')).toBe('group 0 set to hash');
    const after = scratch.write('after.toml', await ctl(cport, 'show config'));
    const r2 = await runLb(['--check', '--print', after]);
    expect(r2.code).toBe(0);
    expect(r2.stdout).toContain('ok (2 listeners, 3 groups, 6 backends)');
    expect(r2.stdout).toMatch(new RegExp(`listener web[^]*group 0 rr\\n +0 127\\.0\\.0\\.1:\\d+ [^\\n]*\\n +1 127\\.0\\.0\\.1:${b.port} [^\\n]* disabled\\n`));
    expect(r2.stdout).toMatch(new RegExp(`listener imap[^]*group 0 hash\\n(?: +\\d [^\\n]*\\n){2} +2 127\\.0\\.0\\.1:${b.port} [^\\n]* disabled\\n`));
    expect(r2.stdout).toMatch(/^control 127\.0\.0\.1:0 level=admin socket_level=admin token_file=\S+$/m);
  });

  it('version names lb and its version', async () => {
    const { cport } = await fixture();
    const v = await ctl(cport, 'version');
    expect(v.split('\n')[0]).toBe(`  This is lb ${VERSION}`);
    expect(v.split('\n').every((l) => l.startsWith('  '))).toBe(true);
  });
});

describe('addressing', () => {
  it('explicit addresses need no session state; use/group set the current listener and group', async () => {
    const { lb, cport } = await fixture();
    const s = await openSession(cport);
    // Explicit: listener web, group 0, channel 1.
    expect(await s.command('disable web 0 1')).toBe('channel 1 disabled');
    expect(showRow(await s.command('show'), 'web', 0, 1).state).toBe('DIS');
    expect(await s.command('disable web 0 1')).toBe('channel 1 already disabled');
    // Session: use imap, then "disable 1" means imap 0 1.
    expect(await s.command('use imap')).toBe('listener imap group 0');
    expect(await s.command('disable 1')).toBe('channel 1 disabled');
    let show = await s.command('show');
    expect(showRow(show, 'imap', 0, 1).state).toBe('DIS');
    expect(showRow(show, 'web', 0, 0).state).toBe('ENA');
    expect(await route(lb, 3, 'imap')).toEqual(['d', 'd', 'd']);
    // group N in the current listener; a group it does not have is an error and changes nothing.
    expect(await s.command('group 1')).toMatch(/^error: no such group 1 in listener imap.* \[LB_CONTROL_BAD_ARGS\]$/);
    expect(await s.command('use web')).toBe('listener web group 0');
    expect(await s.command('group 1')).toBe('listener web group 1');
    expect(await s.command('disable 0')).toBe('channel 0 disabled');
    show = await s.command('show');
    expect(showRow(show, 'web', 1, 0).state).toBe('DIS');
    expect(showRow(show, 'web', 0, 0).state).toBe('ENA');
    // An explicit address does not move the session: "enable 0" is still web group 1.
    expect(await s.command('enable imap 0 1')).toBe('channel 1 enabled');
    expect(await s.command('enable 0')).toBe('channel 0 enabled');
    expect(await s.command('enable 0')).toBe('channel 0 already enabled');
    show = await s.command('show');
    expect(parseShow(show).get('web')!.map((r) => r.state)).toEqual(['ENA', 'DIS', 'ENA']);
    expect(parseShow(show).get('imap')!.map((r) => r.state)).toEqual(['ENA', 'ENA']);
    // Session state is per session: a new one starts at the first listener, group 0.
    const t = await openSession(cport);
    expect(await t.command('disable 0')).toBe('channel 0 disabled');
    expect(showRow(await t.command('show'), 'web', 0, 0).state).toBe('DIS');
  });
});

describe('state-changing commands and real traffic', () => {
  it('disable: DIS in show, no new connections go there, running ones go on; enable brings it back', async () => {
    const { lb, cport, a, b } = await fixture();
    const held: TestClient = await connectClient(lb.port('web'));
    expect(backendOf(await held.request('first'))).toBe('a');
    expect(await ctl(cport, 'disable web 0 0')).toBe('channel 0 disabled');
    const row = showRow(await ctl(cport, 'show'), 'web', 0, 0);
    expect(row).toMatchObject({ state: 'DIS', c: 1 });
    expect(await route(lb, 4)).toEqual(['b', 'b', 'b', 'b']);
    expect(a.accepted).toBe(1);
    // The connection that was running keeps relaying to a.
    expect(await held.request('still there')).toBe('[a] still there');
    expect(b.accepted).toBe(4);
    expect(await ctl(cport, 'enable web 0 0')).toBe('channel 0 enabled');
    expect(showRow(await ctl(cport, 'show'), 'web', 0, 0).state).toBe('ENA');
    expect((await route(lb, 4)).sort()).toEqual(['a', 'a', 'b', 'b']);
  });

  it('maxc limits a channel (0 = unlimited); policy changes the group\'s policy', async () => {
    const { lb, cport } = await fixture();
    expect(await ctl(cport, 'policy web 0 first')).toBe('group 0 set to first');
    expect(await route(lb, 3)).toEqual(['a', 'a', 'a']);
    await finished(lb, 3); // a has no connection left
    expect(await ctl(cport, 'maxc web 0 0 1')).toBe('maxc of channel 0 changed to 1');
    expect(showRow(await ctl(cport, 'show'), 'web', 0, 0).maxc).toBe(1);
    const held = await connectClient(lb.port('web'));
    expect(backendOf(await held.request('hold'))).toBe('a');
    expect(await route(lb, 2)).toEqual(['b', 'b']); // a is full
    expect(await ctl(cport, 'maxc web 0 0 0')).toBe('maxc of channel 0 changed to 0');
    expect(await route(lb, 2)).toEqual(['a', 'a']);
    await held.close();
    expect(await ctl(cport, 'policy web 0 rr')).toBe('group 0 set to rr');
    expect((await route(lb, 4)).sort()).toEqual(['a', 'a', 'b', 'b']);
  });

  it('reset zeroes totalc, sent and rcvd (not c); the counters restart from there', async () => {
    const { lb, cport } = await fixture();
    await ctl(cport, 'policy web 0 first');
    await ask(lb.port('web'), 'one');
    await ask(lb.port('web'), 'two');
    const held = await connectClient(lb.port('web'));
    await held.request('three');
    let row = showRow(await ctl(cport, 'show'), 'web', 0, 0);
    expect(row).toMatchObject({ c: 1, totalc: 3, sent: 11 });
    expect(await ctl(cport, 'reset web 0 0')).toBe('channel 0 counters reset');
    row = showRow(await ctl(cport, 'show'), 'web', 0, 0);
    expect(row).toMatchObject({ c: 1, totalc: 0, sent: 0, rcvd: 0 });
    expect((await ctl(cport, 'mrtg-bytes web 0 0')).split('\n').slice(0, 2)).toEqual(['0', '0']);
    // Bytes after the reset, on the running connection and a new one, count from zero.
    const more = await held.request('four!');
    const fresh = await ask(lb.port('web'), 'five');
    await held.close();
    await finished(lb, 4);
    row = showRow(await ctl(cport, 'show'), 'web', 0, 0);
    expect(row).toMatchObject({ c: 0, totalc: 1, sent: 9, rcvd: more.length + fresh.length });
  });

  it('create adds a channel that starts DIS; enable it and traffic reaches it', async () => {
    const { lb, cport } = await fixture();
    const f = await echoServer('f', { prefix: true });
    const s = await openSession(cport);
    expect(await s.command(`create 127.0.0.1 ${f.port}`)).toBe('channel 2 created');
    expect(showRow(await s.command('show'), 'web', 0, 2)).toMatchObject({ state: 'DIS', ip: '127.0.0.1', port: f.port, totalc: 0 });
    expect(await route(lb, 4)).not.toContain('f');
    expect(f.accepted).toBe(0);
    expect(await s.command('enable 2')).toBe('channel 2 enabled');
    expect(showRow(await s.command('show'), 'web', 0, 2).state).toBe('ENA');
    expect((await route(lb, 6)).sort()).toEqual(['a', 'a', 'b', 'b', 'f', 'f']);
    // host:port overrides the port word (balance); the explicit form names listener and group.
    expect(await s.command(`create imap 0 127.0.0.1:${f.port}`)).toBe('channel 2 created');
    expect(showRow(await s.command('show'), 'imap', 0, 2)).toMatchObject({ state: 'DIS', port: f.port });
  });

  it('assign is refused while the channel is enabled and re-points it while disabled', async () => {
    const { lb, cport, b } = await fixture();
    const g = await echoServer('g', { prefix: true });
    expect(await ctl(cport, `assign web 0 1 127.0.0.1 ${g.port}`)).toMatch(
      /^error: channel must be disabled to assign new address.* \[LB_CONTROL_BAD_ARGS\]$/,
    );
    expect(showRow(await ctl(cport, 'show'), 'web', 0, 1).port).toBe(b.port);
    expect(await ctl(cport, 'disable web 0 1')).toBe('channel 1 disabled');
    expect(await ctl(cport, `assign web 0 1 127.0.0.1 ${g.port}`)).toBe('channel 1 reassigned');
    expect(showRow(await ctl(cport, 'show'), 'web', 0, 1)).toMatchObject({ state: 'DIS', port: g.port });
    expect(await ctl(cport, 'enable web 0 1')).toBe('channel 1 enabled');
    expect((await route(lb, 4)).sort()).toEqual(['a', 'a', 'g', 'g']);
    expect(b.accepted).toBe(0);
  });

  it('hash and rr switch the current (or the addressed) group\'s policy', async () => {
    const { lb, cport } = await fixture();
    const s = await openSession(cport);
    expect(await s.command('hash')).toBe('group 0 set to hash');
    let show = await s.command('show');
    expect(showRow(show, 'web', 0, 0).type).toBe('Hash');
    expect(showRow(show, 'imap', 0, 0).type).toBe('RR');
    const hashed = await route(lb, 6);
    expect(new Set(hashed).size).toBe(1); // one client address: one backend
    expect(await s.command('rr')).toBe('group 0 set to round robin');
    expect(showRow(await s.command('show'), 'web', 0, 0).type).toBe('RR');
    expect((await route(lb, 4)).sort()).toEqual(['a', 'a', 'b', 'b']);
    expect(await s.command('hash imap 0')).toBe('group 0 set to hash');
    show = await s.command('show');
    expect(showRow(show, 'imap', 0, 0).type).toBe('Hash');
    expect(showRow(show, 'web', 0, 0).type).toBe('RR');
    expect(await s.command('rr imap 0')).toBe('group 0 set to round robin');
  });
});

describe('MRTG output', () => {
  it('mrtg-bytes and mrtg-conns in all three address forms: exactly 4 lines that match the traffic', async () => {
    const s1 = await sinkServer('s1', { send: Buffer.alloc(1000, 1) });
    const s2 = await sinkServer('s2', { send: Buffer.alloc(3000, 2) });
    const dead = await refusedPort();
    const live = await echoServer('live');
    const { lb, port: cport } = await startControlLb({
      global: { access_log: true },
      control: adminControl(),
      listeners: {
        web: { listen: '127.0.0.1:0', connect_timeout: '1s', groups: [{ policy: 'rr', backends: [at(s1.port), at(s2.port)] }] },
        other: { listen: '127.0.0.1:0', connect_timeout: '1s', groups: [{ policy: 'rr', backends: [at(dead), at(live.port)] }] },
      },
    });
    const transfer = async (port: number, payload: Buffer): Promise<number> => {
      const c = await connectClient(port);
      c.socket.end(payload);
      await within(c.ended, 3000, 'the backend\'s data and FIN');
      const n = c.received().length;
      await c.close();
      return n;
    };
    expect(await transfer(lb.port('web'), Buffer.alloc(100, 7))).toBe(1000);
    expect(await transfer(lb.port('web'), Buffer.alloc(150, 8))).toBe(3000);
    expect(await transfer(lb.port('other'), Buffer.from('hello'))).toBe(5); // channel 0 refuses: fails over
    await finished(lb, 3);

    const four = (reply: string): string[] => {
      const lines = reply.split('\n');
      expect(lines, reply).toHaveLength(4);
      expect(lines[2]).toMatch(UPTIME);
      return lines;
    };
    const s = await openSession(cport);
    // GROUP CHANNEL in the current listener (the first one).
    const b00 = four(await s.command('mrtg-bytes 0 0'));
    expect(b00.slice(0, 2)).toEqual(['1000', '100']); // backend→client, client→backend
    expect(b00[3]).toMatch(/web/);
    // LISTENER GROUP CHANNEL.
    expect(four(await s.command('mrtg-bytes web 0 1')).slice(0, 2)).toEqual(['3000', '150']);
    expect(four(await s.command('mrtg-conns web 0 1')).slice(0, 2)).toEqual(['1', '0']);
    const bad = four(await s.command('mrtg-conns other 0 0'));
    expect(bad.slice(0, 2)).toEqual(['1', '1']); // one attempt (totalc, as in show), one failed connect
    expect(bad[3]).not.toBe(b00[3]);
    expect(four(await s.command('mrtg-conns other 0 1')).slice(0, 2)).toEqual(['1', '0']);
    // LISTENER alone: its totals.
    expect(four(await s.command('mrtg-bytes web')).slice(0, 2)).toEqual(['4000', '250']);
    expect(four(await s.command('mrtg-conns web')).slice(0, 2)).toEqual(['2', '0']);
    expect(four(await s.command('mrtg-bytes other')).slice(0, 2)).toEqual(['5', '5']);
    // use changes which listener the short form means.
    await s.command('use other');
    expect(four(await s.command('mrtg-bytes 0 1')).slice(0, 2)).toEqual(['5', '5']);
    // Wrong addresses are one error line each.
    for (const bad2 of ['mrtg-bytes web 1 0', 'mrtg-bytes web 0 2', 'mrtg-conns nosuch', 'mrtg-bytes', 'mrtg-bytes web 0 0 0']) {
      expect(await s.command(bad2)).toMatch(ERROR_LINE);
    }
  });

  it('counters count bytes in flight and never go backwards: while relaying, at the close, across table swaps', async () => {
    const a = await echoServer('a');
    const { lb, port: cport } = await startControlLb({
      global: { access_log: true },
      control: adminControl(),
      listeners: { web: { listen: '127.0.0.1:0', groups: [{ policy: 'rr', backends: [at(a.port)] }] } },
    });
    const s = await openSession(cport);
    const read = async (cmd: string): Promise<[number, number]> => {
      const [rcvd, sent] = (await s.command(cmd)).split('\n').map(Number);
      return [rcvd!, sent!];
    };
    const samples: [number, number][] = [];
    const c = await connectClient(lb.port('web'));
    let total = 0;
    for (let i = 1; i <= 8; i++) {
      const chunk = 'x'.repeat(1000 * i);
      total += chunk.length;
      c.socket.write(chunk);
      await c.waitFor((r) => r.length === total, 3000, `${total} echoed bytes`);
      const backend = await read('mrtg-bytes web 0 0');
      const listener = await read('mrtg-bytes web');
      expect(backend).toEqual([total, total]); // live connection: what it relayed so far
      expect(listener).toEqual([total, total]);
      samples.push(backend);
      if (i === 4) {
        // A table swap (disable/enable builds new tables) keeps the counters.
        await s.command('maxc web 0 0 5');
        expect(await read('mrtg-bytes web 0 0')).toEqual([total, total]);
      }
    }
    await c.close();
    await finished(lb, 1);
    samples.push(await read('mrtg-bytes web 0 0'));
    await s.command('disable web 0 0');
    await s.command('enable web 0 0');
    samples.push(await read('mrtg-bytes web 0 0'));
    expect(samples.at(-1)).toEqual([total, total]);
    for (let i = 1; i < samples.length; i++) {
      expect(samples[i]![0]).toBeGreaterThanOrEqual(samples[i - 1]![0]);
      expect(samples[i]![1]).toBeGreaterThanOrEqual(samples[i - 1]![1]);
    }
    expect((await s.command('mrtg-conns web 0 0')).split('\n')[0]).toBe('1');
  });
});

describe('bad input', () => {
  const BAD = [
    'bogus', 'SHOW', 'versionx', 'r', 's', 'ha', 'mrtg', // no prefix abbreviations
    'show nosuch', 'show stat extra', 'use', 'use nosuch', 'group', 'group 9', 'group x', 'group 256', 'group -1',
    'disable', 'disable 99', 'disable x', 'disable web 9 0', 'disable nosuch 0 0', 'disable web 0', 'enable 1 2 3 4',
    'maxc 0', 'maxc 0 -1', 'maxc 0 x', 'maxc 9 1', 'reset 7', 'reset web x 0',
    'create', 'create 127.0.0.1', 'create 127.0.0.1 0', 'create 127.0.0.1 70000', 'create 127.0.0.1 x',
    'assign 0', 'assign 9 127.0.0.1 1', 'hash 1', 'rr web', 'policy', 'policy bogus', 'policy web 0',
    'mrtg-bytes web 9 0', 'mrtg-conns web 0 x', 'mrtg-bytes 1 2 3 4',
  ];

  it('each wrong command or argument gets exactly one error line and the session goes on, state unchanged', async () => {
    const { cport } = await fixture();
    const s = await openSession(cport);
    const before = await s.command('show');
    for (const line of BAD) {
      const reply = await s.command(line);
      expect(reply.split('\n'), `${line} → ${reply}`).toHaveLength(1);
      expect(reply, line).toMatch(ERROR_LINE);
      expect(await s.command('version'), `after ${line}`).toBe(`  This is lb ${VERSION}\n  Node ${process.version}`);
    }
    expect(await s.command('show')).toBe(before);
    expect(await s.command('bogus')).toMatch(/^error: unknown command "bogus" .*\[LB_CONTROL_UNKNOWN_COMMAND\]$/);
    expect(await s.command('maxc 0 x')).toMatch(/\[LB_CONTROL_BAD_ARGS\]$/);
  });

  it('an empty or blank line gets no reply and does not disturb the next one', async () => {
    const { cport } = await fixture();
    const s = await openSession(cport);
    s.write('\n   \n\t\n');
    expect(await s.command('version')).toMatch(/^ {2}This is lb /);
    expect(s.replies()).toHaveLength(1);
  });
});

describe('quit and kill', () => {
  it('quit closes the session; lines after it are not run', async () => {
    const { cport } = await fixture();
    const s = await openSession(cport);
    expect(await s.command('version')).toMatch(/This is lb/);
    s.write('quit\ndisable web 0 0\n');
    await within(s.gone, 3000, 'quit to close the session');
    expect(s.replies()).toHaveLength(1);
    expect(showRow(await ctl(cport, 'show'), 'web', 0, 0).state).toBe('ENA');
  });

  it('kill stops a CLI lb gracefully: the reply, then the process exits 0', async () => {
    const a = await echoServer('a');
    const scratch = scope.scratch();
    const file = scratch.write(
      'lb.toml',
      `[control]\nlisten = "127.0.0.1:0"\nlevel = "admin"\ntoken_file = ${JSON.stringify(testTokenFile())}\n\n[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:${a.port}"]\n`,
    );
    const lbp = await startCliLb([file]);
    expect(lbp.controlPort).toBeGreaterThan(0);
    expect(await ask(lbp.ports.web!, 'hi')).toBe('hi');
    const r = await lbCli(['ctl', '--control', `127.0.0.1:${lbp.controlPort}`, '--token-file', testTokenFile(), 'kill']);
    expect(r.stdout).toBe('shutting down\n');
    expect(r.code).toBe(0);
    const exit = await within(lbp.exited, 5000, 'lb to exit after kill');
    expect(exit.code).toBe(0);
    expect(exit.stderr).toMatch(/stopped/);
  });
});
