// Signals handled from the first instant (issue 30), with real processes and real signals: lb's handlers
// exist before its first bind, so a SIGHUP sent the moment the port accepts is one reload once start-up
// completes (it used to end lb), and a SIGTERM sent as the first client connects drains that client to
// its end and exits 0 (it used to cut it). LB_SIGNAL_TRIES sets the tries of each (CI runs a few).

import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort, HOST, within } from '../helpers/backends.ts';
import { closeHealthServers, serve } from '../helpers/health.ts';
import { CLI, run, useControlScope, type Proc } from '../helpers/control.ts';

const scope = useControlScope();
const TRIES = Number(process.env.LB_SIGNAL_TRIES ?? 3);

/** Connects to `port` again and again until a connect succeeds (bounded), and resolves with that socket. */
async function firstConnect(port: number, p: Proc): Promise<net.Socket> {
  const end = Date.now() + 15_000;
  for (let i = 0; i < 100_000; i++) {
    if (Date.now() > end) throw new Error(`port ${port} never accepted; lb stderr:\n${p.stderr()}`);
    if (p.proc.exitCode !== null || p.proc.signalCode !== null) throw new Error(`lb exited before listening:\n${p.stderr()}`);
    const s = net.connect({ port, host: HOST, allowHalfOpen: true });
    const ok = await new Promise<boolean>((resolve) => {
      s.once('connect', () => resolve(true));
      s.once('error', () => resolve(false));
    });
    if (ok) return s;
    s.destroy();
  }
  throw new Error('unreachable: the loop is bounded by time first');
}

/**
 * The first connection lb relays: connects again and again, each time sending a byte and waiting for its
 * echo; a connection that ends without one is retried. (Where lb runs without the addon, its start-up
 * check of the port listens and closes, and a client it accepted is reset: never lb's to drain.)
 */
async function firstServed(port: number, p: Proc): Promise<net.Socket> {
  for (let i = 0; i < 1000; i++) {
    const s = await firstConnect(port, p);
    s.on('error', () => undefined);
    const echo = within(
      new Promise<boolean>((resolve) => {
        s.once('data', (d: Buffer) => resolve(d.toString() === '!'));
        s.once('close', () => resolve(false));
      }),
      5000,
      'the first echo',
    );
    s.write('!');
    if (await echo) return s;
    s.destroy();
  }
  throw new Error('no connection was relayed in 1,000 tries');
}

async function echoBackend(): Promise<number> {
  const be = await serve('echo', (s) => {
    s.on('data', (d: Buffer) => s.write(d));
    s.on('end', () => s.end());
  });
  return be.port;
}

function startLb(port: number, backend: number): Proc {
  const file = scope.scratch().write(
    'lb.toml',
    `[listeners.web]\nlisten = "127.0.0.1:${port}"\n\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:${backend}"]\n`,
  );
  return run(process.execPath, [CLI, file]);
}

const lines = (text: string, event: string): number => text.split('\n').filter((l) => new RegExp(`^\\S+ \\w+ ${event}( |$)`).test(l)).length;

/**
 * TRIES fresh lb processes on fresh ports in front of one echo backend: `act` signals each one and brings it
 * to its stop; each must then exit 0 (not by a signal) having logged `event` exactly once.
 */
async function signalTries(act: (port: number, p: Proc) => Promise<void>, event: string): Promise<void> {
  const backend = await echoBackend();
  try {
    for (let t = 0; t < TRIES; t++) {
      const port = await freePort();
      const p = startLb(port, backend);
      await act(port, p);
      const r = await within(p.exited, 10_000, 'lb to exit');
      expect({ code: r.code, signal: r.signal }).toEqual({ code: 0, signal: null });
      expect(lines(r.stderr, event)).toBe(1);
    }
  } finally {
    await closeHealthServers();
  }
}

describe('signals from the first instant', () => {
  it(`SIGHUP the moment the port accepts: lb lives, and it reloads once (${TRIES} tries)`, async () => {
    await signalTries(async (port, p) => {
      const s = await firstConnect(port, p);
      p.proc.kill('SIGHUP');
      p.proc.kill('SIGHUP'); // several HUPs before start-up completes are one reload
      s.destroy();
      await p.waitOutput((t) => lines(t, 'reloaded') >= 1, 10_000, 'the reload', 'stderr');
      // It relays after it, then stops on TERM; by then every log line is out, and there was one reload.
      const c = net.connect({ port, host: HOST });
      c.on('error', () => undefined);
      let got = '';
      c.on('data', (d: Buffer) => (got += d.toString()));
      await within(new Promise<void>((r) => c.once('connect', () => r())), 3000, 'a connect after the reload');
      c.write('ping');
      await within(new Promise<void>((r) => c.on('data', () => got === 'ping' && r())), 3000, 'the echo after the reload');
      c.destroy();
      p.proc.kill('SIGTERM');
    }, 'reloaded');
  }, 30_000 + TRIES * 10_000);

  it(`SIGTERM as the first client is relayed: that client is relayed to its end, and lb exits 0 (${TRIES} tries)`, async () => {
    await signalTries(async (port, p) => {
      const s = await firstServed(port, p);
      p.proc.kill('SIGTERM');
      const closed = new Promise<void>((r) => s.once('close', () => r()));
      let after = '';
      s.on('data', (d: Buffer) => (after += d.toString()));
      s.write(' and more');
      await within(new Promise<void>((r) => s.on('data', () => after === ' and more' && r())), 5000, `the echo while lb drains (got ${JSON.stringify(after)})`);
      s.end(); // the client ends its side; the backend echoes the end; lb may now finish
      await within(closed, 5000, 'the client connection to end');
    }, 'stopping');
  }, 30_000 + TRIES * 10_000);
});
