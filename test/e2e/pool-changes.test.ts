// Runtime pool changes over the control port (issue 5; tcpbalance feature 6, txLoadBalancer's admin):
// create / assign / enable / disable / maxc / delete / drain change the pool without touching running
// connections, and `save` writes the running table back as TOML atomically (FILE.bak keeps the old one)
// so that `lb --check` accepts it. The counters of the backends an edit does not concern survive it.
// Commands go over a raw TCP session to the control port, as `lb ctl` / `nc` would send them.

import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfigFile } from '../../src/config/pipeline.ts';
import { backendOf, connectClient, refusedPort, until, type TestClient } from '../helpers/backends.ts';
import { adminControl, ctl, lbCli, testTokenFile } from '../helpers/control.ts';
import { closeHealthServers, namedEcho, showLine, showLines } from '../helpers/health.ts';
import { at, cleanup, startLb, type InProcessLb } from '../helpers/lb.ts';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-pool-'));
});
afterEach(async () => {
  await cleanup(); // lb instances and every tracked session, socket and process
  await closeHealthServers();
  rmSync(dir, { recursive: true, force: true });
});

const ERR = /^error: .+ \[LB_[A-Z_]+\]$/;

interface Pool {
  lb: InProcessLb;
  /** The control port. */
  cp: number;
  cmd(line: string): Promise<string>;
  show(): Promise<string>;
}

function doc(groups: Record<string, unknown>[], listener: Record<string, unknown> = {}, global: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    global: { access_log: true, ...global },
    control: adminControl(),
    listeners: { web: { listen: '127.0.0.1:0', connect_timeout: '1s', ...listener, groups } },
  };
}

async function pool(d: Record<string, unknown>): Promise<Pool> {
  const lb = await startLb(d);
  const cp = lb.rt.control?.port() ?? 0;
  expect(cp).toBeGreaterThan(0);
  const token = (d.control as { token_file?: string } | undefined)?.token_file !== undefined;
  const cmd = (line: string): Promise<string> => ctl(cp, line, 5000, { auth: token });
  return { lb, cp, cmd, show: () => cmd('show web') };
}

/** A long-lived echo session through lb: connected, first exchange done. */
async function session(lb: InProcessLb, hello = 'hello'): Promise<TestClient & { backend: string }> {
  const c = await connectClient(lb.port());
  const backend = backendOf(await c.request(hello));
  return Object.assign(c, { backend });
}

/**
 * One short client; returns the backend's name once lb's counts include it. The addon relays as soon as it
 * has connected, so the reply can come before the worker has counted the connect: `refresh()` (what `show`
 * does first) delivers that before the tests read the shared state.
 */
async function who(lb: InProcessLb, msg = 'who'): Promise<string> {
  const c = await connectClient(lb.port());
  try {
    return backendOf(await c.request(msg));
  } finally {
    await c.close();
    await lb.rt.refresh();
  }
}

describe('pool changes keep running connections', () => {
  it('create, enable, maxc, disable, assign: a long-lived session keeps working across every change', async () => {
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => namedEcho(n)));
    const p = await pool(doc([{ policy: 'rr', backends: [at(a!.port)] }]));
    const s = await session(p.lb, 'start');
    expect(s.backend).toBe('a');
    const sa = p.lb.listener().state.groups[0]!.backends[0]!;
    expect(await who(p.lb, 'x1')).toBe('a');
    const aTotal = sa.total;
    expect(aTotal).toBe(2);

    // create: a new channel, disabled until enabled.
    expect(await p.cmd(`create web 0 127.0.0.1 ${b!.port}`)).toBe('channel 1 created');
    expect(showLine(await p.show(), 0, 1)).toMatchObject({ state: 'DIS', port: b!.port });
    expect(await s.request('after create')).toBe('[a] after create');
    expect(await who(p.lb, 'x2')).toBe('a');

    // enable: round robin over both now.
    expect(await p.cmd('enable web 0 1')).toBe('channel 1 enabled');
    const rr: string[] = [];
    for (let i = 0; i < 4; i++) rr.push(await who(p.lb, `rr ${i}`));
    expect([...new Set(rr)].sort()).toEqual(['a', 'b']);
    expect(await s.request('after enable')).toBe('[a] after enable');

    // maxc 1 on a: the session fills it, so every new client goes to b.
    expect(await p.cmd('maxc web 0 0 1')).toBe('maxc of channel 0 changed to 1');
    for (let i = 0; i < 3; i++) expect(await who(p.lb, `full ${i}`)).toBe('b');
    expect(await s.request('after maxc')).toBe('[a] after maxc');
    expect(showLine(await p.show(), 0, 0)).toMatchObject({ maxc: 1, c: 1 });

    // disable a: new clients b; the running session goes on.
    expect(await p.cmd('disable web 0 0')).toBe('channel 0 disabled');
    expect(showLine(await p.show(), 0, 0).state).toBe('DIS');
    expect(await s.request('after disable')).toBe('[a] after disable');
    expect(await who(p.lb, 'x3')).toBe('b');

    // assign: b (disabled first) re-pointed at c; b's counters move with the channel.
    expect(await p.cmd('assign web 0 1 127.0.0.1 ' + c!.port)).toMatch(ERR); // must be disabled first
    const sbBefore = p.lb.listener().state.groups[0]!.backends[1]!;
    const bTotal = sbBefore.total;
    expect(await p.cmd('disable web 0 1')).toBe('channel 1 disabled');
    expect(await p.cmd(`assign web 0 1 127.0.0.1 ${c!.port}`)).toBe('channel 1 reassigned');
    expect(await p.cmd('enable web 0 1')).toBe('channel 1 enabled');
    expect(await who(p.lb, 'x4')).toBe('c');
    expect(p.lb.listener().state.groups[0]!.backends[1]!.total).toBe(bTotal + 1);
    expect(await s.request('after assign')).toBe('[a] after assign');

    // a's state object and counters survived every edit, and still count the running session.
    expect(p.lb.listener().state.groups[0]!.backends[0]).toBe(sa);
    // total: the session, x1, x2, and the rr clients that went to a.
    expect(sa.total).toBe(aTotal + 1 + rr.filter((n) => n === 'a').length);
    expect(sa.attempts).toBe(sa.total);
    expect(sa.sent()).toBeGreaterThan(0);
    expect(sa.cur).toBe(1);
    await s.close();
  });

  it('drain: no new connections to the channel, the count is reported, `drained` is logged when the last one ends', async () => {
    const [a, b] = await Promise.all(['a', 'b'].map((n) => namedEcho(n)));
    const p = await pool(doc([{ policy: 'first', backends: [at(a!.port), at(b!.port)] }]));
    const s1 = await session(p.lb, 's1');
    const s2 = await session(p.lb, 's2');
    expect([s1.backend, s2.backend]).toEqual(['a', 'a']);
    const sb = p.lb.listener().state.groups[0]!.backends[1]!;

    expect(await p.cmd('drain web 0 0')).toBe('channel 0 draining, 2 connection(s) left');
    expect(showLine(await p.show(), 0, 0)).toMatchObject({ state: 'DRN', c: 2 });
    const stat = await p.cmd('show stat');
    expect(stat.split('\n').find((l) => l.startsWith(`web/0,${at(a!.port)},`))).toContain(',DRAIN,');
    // New clients skip it although policy "first" prefers it; the running sessions go on.
    for (let i = 0; i < 3; i++) expect(await who(p.lb, `new ${i}`)).toBe('b');
    expect(sb.total).toBe(3);
    expect(await s1.request('still here')).toBe('[a] still here');

    const mark = p.lb.logs.mark();
    await s1.close();
    await p.lb.logs.waitFor({ event: 'conn', backend: at(a!.port) }, { from: mark });
    expect(p.lb.logs.all('drained')).toEqual([]); // one connection left
    expect(await s2.request('last one')).toBe('[a] last one');
    await s2.close();
    const drained = await p.lb.logs.waitFor('drained', { from: mark });
    expect(drained.fields).toMatchObject({ listener: 'web', group: '0', backend: at(a!.port) });
    expect(p.lb.logs.all('drained')).toHaveLength(1);
    expect(showLine(await p.show(), 0, 0)).toMatchObject({ state: 'DRN', c: 0 });
    expect(await who(p.lb, 'still drained')).toBe('b');

    // Draining again with nothing open says so.
    expect(await p.cmd('drain web 0 0')).toBe('channel 0 drained (no connections)');
  });

  it('enable ends a drain: the channel takes new clients again, and the reply says it was enabled', async () => {
    const [a, b] = await Promise.all(['a', 'b'].map((n) => namedEcho(n)));
    const p = await pool(doc([{ policy: 'first', backends: [at(a!.port), at(b!.port)] }]));
    expect(await p.cmd('drain web 0 0')).toBe('channel 0 drained (no connections)');
    expect(await who(p.lb, 'drained')).toBe('b');
    const reply = await p.cmd('enable web 0 0');
    // The state did change (DRN → ENA) ...
    expect(showLine(await p.show(), 0, 0).state).toBe('ENA');
    expect(await who(p.lb, 'back')).toBe('a');
    // ... so "already enabled" would tell the operator that nothing happened.
    expect(reply).toBe('channel 0 enabled');
  });

  it('drain of a channel that has no connections logs nothing later and reports 0', async () => {
    const a = await namedEcho('a');
    const b = await namedEcho('b');
    const p = await pool(doc([{ policy: 'rr', backends: [at(a.port), at(b.port)] }]));
    expect(await p.cmd('drain web 0 1')).toBe('channel 1 drained (no connections)');
    for (let i = 0; i < 3; i++) expect(await who(p.lb, `n${i}`)).toBe('a');
    expect(p.lb.logs.all('drained')).toEqual([]);
  });

  it('delete: refused while the channel has connections; "force" removes it and the connection goes on', async () => {
    const [a, b] = await Promise.all(['a', 'b'].map((n) => namedEcho(n)));
    const p = await pool(doc([{ policy: 'first', backends: [at(a!.port), at(b!.port)] }]));
    const s = await session(p.lb, 'long');
    expect(s.backend).toBe('a');
    // Traffic on b so that its counters have something to keep: a is made full for a moment.
    expect(await p.cmd('maxc web 0 0 1')).toBe('maxc of channel 0 changed to 1');
    for (let i = 0; i < 2; i++) expect(await who(p.lb, `b${i}`)).toBe('b');
    const sb = p.lb.listener().state.groups[0]!.backends[1]!;
    // A worker counts a connection's bytes when its relay ends, which may come just after the client saw the close.
    await until(() => sb.cur === 0, 2000, "b's connections to finish in lb");
    const bCounters = { total: sb.total, attempts: sb.attempts, sent: sb.sent(), rcvd: sb.rcvd() };
    expect(bCounters.total).toBe(2);

    const refused = await p.cmd('delete web 0 0');
    expect(refused).toMatch(ERR);
    expect(refused).toContain('has 1 connection(s)');
    expect(showLines(await p.show())).toHaveLength(2);
    expect(await s.request('still a')).toBe('[a] still a');

    expect(await p.cmd('delete web 0 0 force')).toBe('channel 0 deleted (1 connection(s) go on)');
    const rows = showLines(await p.show());
    expect(rows.map((r) => r.port)).toEqual([b!.port]); // b is channel 0 now
    // b kept its counters through the renumbering.
    expect(p.lb.listener().state.groups[0]!.backends[0]).toBe(sb);
    expect({ total: sb.total, attempts: sb.attempts, sent: sb.sent(), rcvd: sb.rcvd() }).toEqual(bCounters);
    expect(rows[0]).toMatchObject({ totalc: 2 });
    // The running connection to the deleted backend goes on, and ends normally.
    expect(await s.request('after delete')).toBe('[a] after delete');
    expect(await who(p.lb, 'new')).toBe('b');
    const mark = p.lb.logs.mark();
    await s.close();
    const line = await p.lb.logs.waitFor({ event: 'conn', backend: at(a!.port) }, { from: mark });
    expect(line.fields.end).toBe('client-close');
    await until(() => p.lb.listener().state.cur === 0, 2000, 'every relay to finish');
    expect(sb.cur).toBe(0);

    // Without connections, delete needs no force.
    expect(await p.cmd('delete web 0 0')).toBe('channel 0 deleted');
    expect(showLines(await p.show())).toHaveLength(0);
  });
});

describe('pool changes and health checks', () => {
  it('create in a checked group: not checked while DIS, checked once enabled; delete stops its checks', async () => {
    const a = await namedEcho('a');
    const b = await namedEcho('b');
    const p = await pool(doc([{ policy: 'rr', backends: [at(a.port)], health: { interval: '100ms', timeout: '80ms', rise: 2, fall: 2 } }]));
    expect(await p.cmd(`create web 0 127.0.0.1 ${b.port}`)).toBe('channel 1 created');
    await new Promise((r) => setTimeout(r, 250));
    expect(b.accepted).toBe(0);
    expect(await p.cmd('enable web 0 1')).toBe('channel 1 enabled');
    await until(() => b.accepted >= 2, 1500, 'checks of the created backend');
    expect(showLine(await p.show(), 0, 1)).toMatchObject({ state: 'ENA', check: 'L4OK' });
    expect(await p.cmd('delete web 0 1')).toBe('channel 1 deleted');
    await new Promise((r) => setTimeout(r, 60)); // a check in flight may still land
    const seen = b.accepted;
    await new Promise((r) => setTimeout(r, 300));
    expect(b.accepted).toBe(seen);
  });

  it("edits of other channels keep a down backend's health state and counters (no second DOWN)", async () => {
    const ok = await namedEcho('ok');
    const c = await namedEcho('c');
    const dead = await refusedPort();
    const p = await pool(
      doc([{ policy: 'rr', backends: [at(dead), at(ok.port)], health: { interval: '100ms', timeout: '80ms', rise: 2, fall: 2 } }]),
    );
    const sd = p.lb.listener().state.groups[0]!.backends[0]!;
    await until(() => !sd.check.up, 1500, 'the dead backend to go down');
    const so = p.lb.listener().state.groups[0]!.backends[1]!;
    for (let i = 0; i < 3; i++) expect(await who(p.lb, `n${i}`)).toBe('ok');
    const okTotal = so.total;
    const failedBefore = sd.check.failedChecks;
    expect(await p.cmd(`create web 0 127.0.0.1 ${c.port}`)).toBe('channel 2 created');
    expect(await p.cmd('enable web 0 2')).toBe('channel 2 enabled');
    expect(await p.cmd('maxc web 0 1 10')).toBe('maxc of channel 1 changed to 10');
    expect(await p.cmd('delete web 0 2')).toBe('channel 2 deleted');
    expect(p.lb.listener().state.groups[0]!.backends[0]).toBe(sd);
    expect(p.lb.listener().state.groups[0]!.backends[1]).toBe(so);
    expect(so.total).toBe(okTotal);
    expect(sd.check.up).toBe(false);
    expect(sd.check.downTransitions).toBe(1);
    expect(sd.check.failedChecks).toBeGreaterThanOrEqual(failedBefore);
    expect(showLine(await p.show(), 0, 0)).toMatchObject({ state: 'dis', check: 'L4CON' });
    await new Promise((r) => setTimeout(r, 250));
    expect(p.lb.logs.all({ event: 'health', backend: at(dead) })).toHaveLength(1);
  });
});

describe('save', () => {
  it('writes the running table (after create + enable) atomically, keeps FILE.bak, and lb --check accepts it', async () => {
    const [a, b] = await Promise.all(['a', 'b'].map((n) => namedEcho(n)));
    const file = path.join(dir, 'lb.toml');
    const original = `# hand-written\n[control]\nlisten = "127.0.0.1:0"\nlevel = "admin"\ntoken_file = ${JSON.stringify(testTokenFile())}\n\n[listeners.web]\nlisten = "127.0.0.1:0"\n\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:${a!.port}"]\n`;
    writeFileSync(file, original);
    const loaded = await loadConfigFile(file, { resolve: 'skip' });
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.diagnostics));
    // `save FILE` writes only inside lb's own directories: here, the state file's.
    const withState = { ...(loaded.doc as unknown as Record<string, unknown>), global: { state_file: path.join(dir, 'state.json') } };
    const p = await pool(withState);
    expect(await who(p.lb, 'one')).toBe('a');
    const sa = p.lb.listener().state.groups[0]!.backends[0]!;
    chmodSync(file, 0o600); // a config with secrets stays private after a save
    const inodeBefore = statSync(file).ino;

    expect(await p.cmd(`create web 0 127.0.0.1 ${b!.port}`)).toBe('channel 1 created');
    expect(await p.cmd('enable web 0 1')).toBe('channel 1 enabled');
    expect(await p.cmd(`save ${file}`)).toBe(`saved to ${file}`);
    await p.lb.logs.waitFor({ event: 'saved', file });

    expect(readFileSync(`${file}.bak`, 'utf8')).toBe(original);
    const saved = readFileSync(file, 'utf8');
    expect(saved).toContain(`127.0.0.1:${a!.port}`);
    expect(saved).toContain(`127.0.0.1:${b!.port}`);
    expect(statSync(file).ino).not.toBe(inodeBefore); // replaced by a rename, not rewritten in place
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).sort()).toEqual(['lb.toml', 'lb.toml.bak', 'state.json']); // no temp file left behind

    const check = await lbCli(['--check', file]);
    expect(check.stderr).toBe('');
    expect(check.code).toBe(0);
    expect(check.stdout).toBe(`${file}: ok (1 listener, 1 group, 2 backends)\n`);
    // The saved file compiles to the running table.
    const again = await loadConfigFile(file, { resolve: 'skip' });
    if (!again.ok) throw new Error(JSON.stringify(again.diagnostics));
    expect(again.table).toEqual(p.lb.rt.table);

    // Saving again: the .bak is now the previous save; the counters were not touched by saving.
    expect(await p.cmd('disable web 0 0')).toBe('channel 0 disabled');
    expect(await p.cmd(`save ${file}`)).toBe(`saved to ${file}`);
    expect(readFileSync(`${file}.bak`, 'utf8')).toBe(saved);
    expect(readFileSync(file, 'utf8')).toMatch(/enabled = false/);
    expect((await lbCli(['--check', file])).code).toBe(0);
    expect(sa.total).toBe(1);
  });

  it('round trip of health, queue and per-backend overrides: the saved file compiles to the running table', async () => {
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => namedEcho(n)));
    const p = await pool(
      doc(
        [
          {
            policy: 'first',
            health: { interval: '150ms', timeout: '100ms', rise: 3, fall: 2, send: 'PING\r\n', expect: '/^\\+OK/i' },
            backends: [
              { host: '127.0.0.1', port: a!.port, maxc: 2, weight: 3 },
              { host: '127.0.0.1', port: b!.port, health: { port: c!.port, expect: 'PONG' } },
              { host: '127.0.0.1', port: c!.port, enabled: false, health: { enabled: false } },
            ],
          },
          { policy: 'leastconn', backends: [at(c!.port)] },
        ],
        { queue: { max: 7, timeout: '2500ms' } },
        { state_file: path.join(dir, 'state.json') }, // `save FILE` writes only inside lb's own directories
      ),
    );
    expect(await p.cmd(`create web 1 127.0.0.1 ${a!.port}`)).toBe('channel 1 created');
    expect(await p.cmd('maxc web 1 1 5')).toBe('maxc of channel 1 changed to 5');
    const file = path.join(dir, 'rich.toml');
    expect(await p.cmd(`save ${file}`)).toBe(`saved to ${file}`);
    const check = await lbCli(['--check', file]);
    expect(check.stderr).toBe('');
    expect(check.code).toBe(0);
    const again = await loadConfigFile(file, { resolve: 'skip' });
    if (!again.ok) throw new Error(JSON.stringify(again.diagnostics));
    expect(again.table).toEqual(p.lb.rt.table);
    // Spot checks of what an operator would look for in the file.
    const text = readFileSync(file, 'utf8');
    expect(text).toContain('send = "PING\\r\\n"');
    expect(text).toContain('expect = "/^\\\\+OK/i"');
    expect(text).toMatch(/queue = \{ max = 7, timeout = "2\.5s" \}|queue = \{ max = 7, timeout = "2500ms" \}/);
  });

  it('save without FILE on an lb started without a file is an error; without admin it is refused', async () => {
    const a = await namedEcho('a');
    const p = await pool(doc([{ backends: [at(a.port)] }]));
    expect(await p.cmd('save')).toMatch(/^error: .*name a FILE.* \[LB_[A-Z_]+\]$/);
    const file = path.join(dir, 'no.toml');
    const q = await pool({ ...doc([{ backends: [at(a.port)] }]), control: { listen: '127.0.0.1:0', admin: false } });
    const reply = await q.cmd(`save ${file}`);
    expect(reply).toMatch(/^error: .*admin.* \[LB_CONTROL_NOT_ADMIN\]$/);
    expect(readdirSync(dir)).toEqual([]);
  });
});
