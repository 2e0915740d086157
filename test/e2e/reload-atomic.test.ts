// A reload is all or nothing (issue 40). The workers commit a new table together: a worker that dies
// during the commit is replaced by one started on the new table (the reload completes everywhere), or,
// if that replacement cannot start, every worker goes back to the old table and the reload is reported
// failed. What a reload can fail to set up (here: the HTTP face's new port) is bound before anything
// commits, so a failure there refuses the reload and the old table, old faces and old ports stay.
// `show info` and /metrics say which table generation is in force and how the last reload went.

import net, { type Server } from 'node:net';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ask, backendOf, freePort, within } from '../helpers/backends.ts';
import { ctl as ctlAt, testTokenFile } from '../helpers/control.ts';
import { namedEcho } from '../helpers/health.ts';
import { get, metric, parseMetrics } from '../helpers/http.ts';
import { cleanup } from '../helpers/lb.ts';
import { regionsOf, startLbFromFile, type FileLb } from '../helpers/workers.ts';

let dir = '';
let hooks: string | undefined;
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-reload-atomic-'));
  hooks = process.env.LB_TEST_HOOKS;
  process.env.LB_TEST_HOOKS = '1'; // rt.crashWorker
});
afterEach(async () => {
  await cleanup();
  rmSync(dir, { recursive: true, force: true });
  if (hooks === undefined) delete process.env.LB_TEST_HOOKS;
  else process.env.LB_TEST_HOOKS = hooks;
});

/** Two workers, an admin control port on 127.0.0.1 (the test token), listeners as given. */
function configText(listeners: { name: string; listen: string; backend: number }[], http?: string, control: { listen?: string; socket?: string } = {}): string {
  const out = ['[global]', 'workers = 2', 'access_log = true', 'drain_timeout = "1s"', '', '[control]', `listen = "${control.listen ?? '127.0.0.1:0'}"`, 'level = "admin"', `token_file = "${testTokenFile()}"`];
  if (control.socket) out.push(`socket = "${control.socket}"`);
  if (http) out.push(`http = "${http}"`);
  out.push('');
  for (const l of listeners) {
    out.push(`[listeners.${l.name}]`, `listen = "${l.listen}"`, 'connect_timeout = "1s"', `[[listeners.${l.name}.groups]]`, `backends = ["127.0.0.1:${l.backend}"]`, '');
  }
  return out.join('\n');
}

/** One command on lb's control port, authenticated. */
function ctl(lb: FileLb, command: string): Promise<string> {
  return ctlAt(lb.rt.control!.port(), command, 20_000, { auth: true });
}

function info(text: string): Record<string, string> {
  return Object.fromEntries(text.split('\n').map((line) => [line.slice(0, line.indexOf(': ')), line.slice(line.indexOf(': ') + 2)]));
}

async function showInfo(lb: FileLb): Promise<Record<string, string>> {
  return info(await ctl(lb, 'show info'));
}

/** Whether a connection to the port is refused (nothing listens there). */
async function refused(port: number): Promise<boolean> {
  const s = net.connect(port, '127.0.0.1');
  const outcome = new Promise<boolean>((resolve) => {
    s.once('connect', () => resolve(false));
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
  try {
    return await within(outcome, 3000, `a connect to ${port}`);
  } finally {
    s.destroy();
  }
}

/** `n` requests through `port`, each on its own connection; the backends that answered, and the workers that served them. */
async function serve(lb: FileLb, port: number, n: number): Promise<{ backends: Set<string>; workers: Set<number> }> {
  const mark = lb.logs.mark();
  const backends = new Set<string>();
  for (let i = 0; i < n; i++) backends.add(backendOf(await ask(port, `req ${i}`)));
  await lb.logs.waitFor('conn', { from: mark, count: n, ms: 5000 });
  return { backends, workers: regionsOf(lb.logs.lines.slice(mark).filter((l) => l.event === 'conn')) };
}

/**
 * lb on a file with listener "old" (to backend a); the file is then rewritten, for the next reload, to
 * drop "old" and add "new" (to backend b) on a port known in advance.
 */
async function oldAndNew(): Promise<{ lb: FileLb; oldPort: number; newPort: number }> {
  const a = await namedEcho('a');
  const b = await namedEcho('b');
  const file = path.join(dir, 'lb.toml');
  const lb = await startLbFromFile(file, configText([{ name: 'old', listen: '127.0.0.1:0', backend: a.port }]));
  const newPort = await freePort();
  writeFileSync(file, configText([{ name: 'new', listen: `127.0.0.1:${newPort}`, backend: b.port }]));
  return { lb, oldPort: lb.port('old'), newPort };
}

describe('a worker that dies during the commit', () => {
  it('is restarted on the new table: the reload completes in every worker, and says so', async () => {
    const { lb, oldPort, newPort } = await oldAndNew();
    expect(await serve(lb, oldPort, 20)).toEqual({ backends: new Set(['a']), workers: new Set([0, 1]) });
    expect(await showInfo(lb)).toMatchObject({ Generation: '1', WorkerGenerations: '1,1', Reloads: '0', LastReload: 'none' });

    // Worker 0 switches, then dies before it confirms.
    await lb.rt.crashWorker(0, 'commit');
    const reply = await ctl(lb, 'reload');
    expect(reply).toBe('reloaded: generation 2 in force in every worker (worker 0 died during it and was restarted on it)');
    const restart = lb.logs.all('worker-restart');
    expect(restart).toHaveLength(1);
    expect(restart[0]!.fields).toMatchObject({ worker: '0', generation: '2' });

    // One table everywhere, the new one: both workers (the replacement too) serve "new"; nobody serves "old".
    expect(await showInfo(lb)).toMatchObject({ Generation: '2', WorkerGenerations: '2,2', Workers: '2', WorkerRestarts: '1', Reloads: '1', ReloadFailures: '0', LastReload: 'ok' });
    expect(await serve(lb, newPort, 30)).toEqual({ backends: new Set(['b']), workers: new Set([0, 1]) });
    for (let i = 0; i < 10; i++) expect(await refused(oldPort), `connect ${i} to the removed listener`).toBe(true);
    expect(lb.rt.snapshot().listeners.map((l) => l.name)).toEqual(['new']);
  }, 60_000);

  it('whose replacement cannot start on the new table: every worker returns to the old one and the reload is reported failed', async () => {
    const { lb, oldPort, newPort } = await oldAndNew();
    await lb.rt.crashWorker(0, 'commit', true);
    const reply = await ctl(lb, 'reload');
    expect(reply).toMatch(/^error: reload failed, the running configuration \(generation 1\) is unchanged: worker 0 could not start on the new table \[LB_RELOAD_FAILED\]$/);
    expect(lb.logs.all('commit-rolled-back')).toHaveLength(1);

    const shown = await showInfo(lb);
    expect(shown).toMatchObject({ Generation: '1', WorkerGenerations: '1,1', Workers: '2', Reloads: '1', ReloadFailures: '1', LastReload: 'failed' });
    expect(shown.LastReloadError).toBe('worker 0 could not start on the new table');
    // The old table in both workers: "old" is served by both, "new" by none.
    expect(await serve(lb, oldPort, 30)).toEqual({ backends: new Set(['a']), workers: new Set([0, 1]) });
    for (let i = 0; i < 10; i++) expect(await refused(newPort), `connect ${i} to the listener the reload would have added`).toBe(true);
    expect(lb.rt.snapshot().listeners.map((l) => l.name)).toEqual(['old']);

    // Nothing is left half-done: the same file reloads now (generation 2 was the table rolled back: never reused).
    expect(await ctl(lb, 'reload')).toBe('reloaded: generation 3 in force in every worker');
    expect(await serve(lb, newPort, 20)).toEqual({ backends: new Set(['b']), workers: new Set([0, 1]) });
  }, 60_000);
});

describe('an HTTP face that cannot stage', () => {
  it('refuses the whole reload: the old port still answers, the table is unchanged, show info and /metrics say the last reload failed', async () => {
    const a = await namedEcho('a');
    const b = await namedEcho('b');
    const file = path.join(dir, 'lb.toml');
    const httpPort = await freePort();
    const lb = await startLbFromFile(file, configText([{ name: 'web', listen: '127.0.0.1:0', backend: a.port }], `127.0.0.1:${httpPort}`));
    const web = lb.port('web');
    const base = `http://127.0.0.1:${httpPort}`;
    expect((await get(`${base}/healthz`)).text).toBe('ok\n');
    let m = parseMetrics((await get(`${base}/metrics`)).text);
    expect([metric(m, 'lb_config_generation'), metric(m, 'lb_config_last_reload_successful'), metric(m, 'lb_config_reloads_total')]).toEqual([1, 1, 0]);

    // The new file moves the face to a port another program holds, and sends "web" to b.
    const taken: Server = net.createServer();
    taken.listen(0, '127.0.0.1');
    await once(taken, 'listening');
    const takenPort = (taken.address() as net.AddressInfo).port;
    try {
      writeFileSync(file, configText([{ name: 'web', listen: '127.0.0.1:0', backend: b.port }], `127.0.0.1:${takenPort}`));
      const reply = await ctl(lb, 'reload');
      expect(reply).toBe(
        `error: reload failed, the running configuration (generation 1) is unchanged: http: cannot listen on 127.0.0.1:${takenPort}: EADDRINUSE [LB_RELOAD_FAILED]`,
      );
      expect((await get(`${base}/healthz`)).text).toBe('ok\n'); // the old port still answers
      expect(await serve(lb, web, 20)).toEqual({ backends: new Set(['a']), workers: new Set([0, 1]) }); // the old table
      const shown = await showInfo(lb);
      expect(shown).toMatchObject({ Generation: '1', WorkerGenerations: '1,1', Reloads: '1', ReloadFailures: '1', LastReload: 'failed' });
      expect(shown.LastReloadError).toBe(`http: cannot listen on 127.0.0.1:${takenPort}: EADDRINUSE`);
      expect(Date.parse(shown.LastReloadTime!)).toBeGreaterThan(lb.rt.startedAt - 1);
      m = parseMetrics((await get(`${base}/metrics`)).text);
      expect([metric(m, 'lb_config_generation'), metric(m, 'lb_config_last_reload_successful'), metric(m, 'lb_config_reloads_total'), metric(m, 'lb_config_reload_failures_total')]).toEqual([1, 0, 1, 1]);
      expect(metric(m, 'lb_config_last_reload_success_timestamp_seconds')).toBe(lb.rt.startedAt / 1000);
    } finally {
      await new Promise<void>((resolve) => taken.close(() => resolve()));
    }

    // The port is free now: the same file reloads, the face moves, the table changes.
    expect(await ctl(lb, 'reload')).toBe('reloaded: generation 2 in force in every worker');
    const moved = `http://127.0.0.1:${takenPort}`;
    m = parseMetrics((await get(`${moved}/metrics`)).text);
    expect([metric(m, 'lb_config_generation'), metric(m, 'lb_config_last_reload_successful'), metric(m, 'lb_config_reloads_total'), metric(m, 'lb_config_reload_failures_total')]).toEqual([2, 1, 2, 1]);
    expect(metric(m, 'lb_config_last_reload_success_timestamp_seconds')).toBeGreaterThan(lb.rt.startedAt / 1000);
    await expect(get(`${base}/healthz`, { ms: 2000 })).rejects.toThrow(); // the old port is closed
    expect(await serve(lb, web, 20)).toEqual({ backends: new Set(['b']), workers: new Set([0, 1]) });
    expect(await showInfo(lb)).toMatchObject({ Generation: '2', LastReload: 'ok', ReloadFailures: '1' });
  }, 60_000);
});

describe('a control port that moves in a reload refused later', () => {
  it('keeps its old TCP port and its Unix socket: the new port is never served, the socket path still answers', async () => {
    const a = await namedEcho('a');
    const file = path.join(dir, 'lb.toml');
    const sock = path.join(dir, 'run', 'lb.sock');
    const lb = await startLbFromFile(file, configText([{ name: 'web', listen: '127.0.0.1:0', backend: a.port }], undefined, { socket: sock }));
    const oldControl = lb.rt.control!.port();
    expect(info(await ctlAt(sock, 'show info'))).toMatchObject({ Generation: '1' });

    // The control port moves (socket path kept) and the HTTP face asks for a port another program holds.
    const newControl = await freePort();
    const taken: Server = net.createServer();
    taken.listen(0, '127.0.0.1');
    await once(taken, 'listening');
    const takenPort = (taken.address() as net.AddressInfo).port;
    try {
      writeFileSync(file, configText([{ name: 'web', listen: '127.0.0.1:0', backend: a.port }], `127.0.0.1:${takenPort}`, { listen: `127.0.0.1:${newControl}`, socket: sock }));
      expect(await ctlAt(sock, 'reload', 20_000)).toMatch(/^error: reload failed, the running configuration \(generation 1\) is unchanged: http: cannot listen on .*EADDRINUSE \[LB_RELOAD_FAILED\]$/);
      // The socket path is the running server's still (a staged one never replaced it), and so is the port.
      expect(info(await ctlAt(sock, 'show info'))).toMatchObject({ Generation: '1', LastReload: 'failed' });
      expect(lb.rt.control!.port()).toBe(oldControl);
      expect(info(await ctl(lb, 'show info'))).toMatchObject({ Generation: '1', LastReload: 'failed' });
      expect(await refused(newControl)).toBe(true);
    } finally {
      await new Promise<void>((resolve) => taken.close(() => resolve()));
    }
    // Once the port is free the same file reloads: the new control port answers, the old one is closed. The
    // session that asked gets its answer, then is closed with the reason (its endpoint was replaced).
    expect(await ctlAt(sock, 'reload', 20_000)).toBe(
      'reloaded: generation 2 in force in every worker\n\nerror: this control endpoint was replaced by a reload: reconnect [LB_CONTROL_MOVED]',
    );
    expect(lb.rt.control!.port()).toBe(newControl);
    expect(await refused(oldControl)).toBe(true);
    expect(info(await ctl(lb, 'show info'))).toMatchObject({ Generation: '2', LastReload: 'ok' });
    expect(info(await ctlAt(sock, 'show info'))).toMatchObject({ Generation: '2', LastReload: 'ok' });
  }, 60_000);
});
