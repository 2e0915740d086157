// A port that never flickers (issue 31), with real processes: clients connecting in tight loops from
// before lb starts (or before a reload adds the listener) are refused until lb serves, and never after.
// The start-up check of each new address used to listen on it and close it again before the workers
// bound theirs: a client that came in between was refused after having been served, and one accepted
// into that socket's backlog was reset. LB_FLICKER_STARTS sets the number of starts (CI runs a few).

import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort, HOST, within } from '../helpers/backends.ts';
import { closeHealthServers, serve } from '../helpers/health.ts';
import { loadAddon } from '../../src/addon.ts';
import { CLI, ctl, run, startCliLb, useControlScope, webToml, type Proc } from '../helpers/control.ts';

const scope = useControlScope();
const STARTS = Number(process.env.LB_FLICKER_STARTS ?? 4);
/** Concurrent connect loops per port. */
const LOOPS = 4;
/** Echoed connections the loops make, together, once the port serves (lb's start-up line or its reload). */
const SERVED_AFTER = 200;

/** What the loops saw. An attempt is "after" when it began once some loop's connect had been accepted. */
interface Tally {
  refusedBefore: number;
  /** Attempts whose connect was accepted (served or not). */
  connected: number;
  served: number;
  /** Attempts begun after the first accepted connect that failed: each is a flicker (refused, reset, ...). */
  failedAfter: string[];
}

/** One attempt: connect, send a byte, read its echo. Resolves 'ok' or what went wrong. */
function attempt(port: number, tally: Tally): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: HOST });
    let connected = false;
    const done = (what: string): void => {
      s.destroy();
      resolve(what);
    };
    s.once('connect', () => tally.connected++);
    s.once('connect', () => {
      connected = true;
      s.write('!');
    });
    s.once('data', (d: Buffer) => done(d.toString() === '!' ? 'ok' : `wrong echo ${JSON.stringify(d.toString())}`));
    s.once('error', (e: NodeJS.ErrnoException) => done(connected ? `${e.code} after connect` : (e.code ?? e.message)));
    s.once('close', () => done(connected ? 'closed without an echo' : 'closed before connecting'));
    s.setTimeout(5000, () => done(connected ? 'no echo in 5 s' : 'no connect in 5 s'));
  });
}

/**
 * LOOPS tight connect loops on `port` until `enough()` says stop (bounded by time). Attempts begun before
 * any connect was accepted may be refused; from then on every attempt must be served.
 */
function connectLoops(port: number, enough: (t: Tally) => boolean): { tally: Tally; done: Promise<void> } {
  const tally: Tally = { refusedBefore: 0, connected: 0, served: 0, failedAfter: [] };
  const deadline = Date.now() + 30_000;
  const loop = async (): Promise<void> => {
    for (let i = 0; i < 200_000 && Date.now() < deadline && !enough(tally); i++) {
      const after = tally.connected > 0;
      const r = await attempt(port, tally);
      if (r === 'ok') tally.served++;
      else if (after) tally.failedAfter.push(r);
      else if (r === 'ECONNREFUSED') tally.refusedBefore++;
      else tally.failedAfter.push(`${r} (the first accepted connect: it must be served)`);
    }
  };
  return { tally, done: Promise.all(Array.from({ length: LOOPS }, loop)).then(() => undefined) };
}

async function echoBackend(): Promise<number> {
  const be = await serve('echo', (s) => {
    s.on('data', (d: Buffer) => s.write(d));
    s.on('end', () => s.end());
  });
  return be.port;
}

const listener = (name: string, port: number, backend: number): string =>
  `[listeners.${name}]\nlisten = "127.0.0.1:${port}"\n\n[[listeners.${name}.groups]]\nbackends = ["127.0.0.1:${backend}"]\n`;

const STARTED = /^lb \S+ listening on /m;
const lines = (text: string, event: string): number => text.split('\n').filter((l) => new RegExp(`^\\S+ \\w+ ${event}( |$)`).test(l)).length;

/** Waits for the loops, then checks them: refused until accepted, then always served. */
async function settle(loops: { tally: Tally; done: Promise<void> }, p: Proc, what: string): Promise<void> {
  await within(loops.done, 40_000, `the connect loops (${what})`);
  const { tally } = loops;
  expect(tally.failedAfter.slice(0, 5), `${what}: failures once the port accepted (${tally.failedAfter.length}); lb stderr:\n${p.stderr()}`).toEqual([]);
  expect(tally.served).toBeGreaterThanOrEqual(SERVED_AFTER);
}

describe('a port that never flickers', () => {
  it(`clients connecting from before start-up are refused until lb serves, never after (${STARTS} starts)`, async () => {
    const backend = await echoBackend();
    try {
      for (let t = 0; t < STARTS; t++) {
        const port = await freePort();
        let started = -1;
        const loops = connectLoops(port, (tally) => started >= 0 && tally.served >= started + SERVED_AFTER);
        const p = run(process.execPath, [CLI, scope.scratch().write(`lb-${t}.toml`, listener('web', port, backend))]);
        await p.waitOutput((text) => STARTED.test(text), 15_000, 'the start-up line', 'stderr');
        started = loops.tally.served;
        await settle(loops, p, `start ${t + 1}`);
        p.proc.kill('SIGTERM');
        await within(p.exited, 10_000, 'lb to exit');
      }
    } finally {
      await closeHealthServers();
    }
  }, 60_000 + STARTS * 20_000);

  it(`listeners reloads add: refused until the reload, never after (${STARTS} reloads)`, async () => {
    const backend = await echoBackend();
    try {
      let text = listener('web', 0, backend);
      const file = scope.scratch().write('reload.toml', text);
      const p = run(process.execPath, [CLI, file]);
      await p.waitOutput((out) => STARTED.test(out), 15_000, 'the start-up line', 'stderr');
      // The check of a reload's new address is brief (the workers already run): each reload is one more chance
      // for the loops to meet a check that listens.
      for (let t = 0; t < STARTS; t++) {
        const port = await freePort();
        let reloaded = -1;
        const loops = connectLoops(port, (tally) => reloaded >= 0 && tally.served >= reloaded + SERVED_AFTER);
        text += '\n' + listener(`api${t}`, port, backend);
        scope.scratch().write('reload.toml', text);
        p.proc.kill('SIGHUP');
        await p.waitOutput((out) => lines(out, 'reloaded') >= t + 1, 15_000, `reload ${t + 1}`, 'stderr');
        reloaded = loops.tally.served;
        await settle(loops, p, `reload ${t + 1}`);
      }
    } finally {
      await closeHealthServers();
    }
  }, 60_000 + STARTS * 20_000);

  it('show info names the check: bind with the addon; without it a listen probe, and a warning at start', async () => {
    const backend = await echoBackend();
    try {
      const withAddon = loadAddon().ok;
      const lbp = await startCliLb([scope.scratch().write('info.toml', webToml({}, [backend]))]);
      const info = await ctl(lbp.controlPort, 'show info');
      expect(info).toMatch(withAddon ? /^PortCheck: bind \(never listens\)$/m : /^PortCheck: listen probe \(addon .*\): a client may be reset at start-up$/m);
      if (withAddon) expect(lbp.stderr()).not.toMatch(/ port-check /);
      else expect(lbp.stderr()).toMatch(/^\S+ warn port-check method=listen /m);

      const off = await startCliLb([scope.scratch().write('off.toml', webToml({}, [backend]))], { env: { ...process.env, LB_NATIVE: 'off' } });
      expect(await ctl(off.controlPort, 'show info')).toMatch(/^PortCheck: listen probe \(turned off \(LB_NATIVE=off\)\): a client may be reset at start-up$/m);
      expect(off.stderr()).toMatch(/^\S+ warn port-check method=listen reason="turned off \(LB_NATIVE=off\)" /m);
    } finally {
      await closeHealthServers();
    }
  });

  it('a reload adding a listener on a port another process holds is refused, naming the address; the old table serves on', async () => {
    const backend = await echoBackend();
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen({ port: 0, host: HOST, reusePort: true }, resolve));
    try {
      const held = (holder.address() as net.AddressInfo).port;
      const file = scope.scratch().write('held.toml', listener('web', 0, backend));
      const lbp = await startCliLb([file]);
      scope.scratch().write('held.toml', listener('web', 0, backend) + '\n' + listener('api', held, backend));
      lbp.proc.kill('SIGHUP');
      const text = await lbp.waitOutput((t) => lines(t, 'reload-failed') >= 1, 15_000, 'the refused reload', 'stderr');
      expect(text).toContain(`listener api: cannot listen on 127.0.0.1:${held}: EADDRINUSE`);
      expect(text).toMatch(/ error reload-failed code=LB_RELOAD_FAILED /);
      const tally: Tally = { refusedBefore: 0, connected: 0, served: 0, failedAfter: [] };
      expect(await attempt(lbp.ports['web']!, tally)).toBe('ok');
    } finally {
      await new Promise<void>((resolve) => holder.close(() => resolve()));
      await closeHealthServers();
    }
  });
});
