// Reset propagation: a TCP RST on one side of a relay destroys the other side (not a half-close: the
// survivor cannot go on sending), the relay ends with `end=reset`, and nothing stays open.

import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connectClient, echoServer, nextConnection, resetServer, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

/** Resolves once `socket` is unusable: after the peer's FIN a write must fail (a half-close would take it). */
async function destroyedByPeer(socket: Socket, ended: Promise<unknown>, closed: Promise<unknown>): Promise<void> {
  await within(Promise.race([ended, closed]), 3000, 'the peer to close');
  if (socket.destroyed) return;
  // Only a FIN so far: the peer may merely have half-closed. Writing to a destroyed peer gets an RST back.
  const failed = new Promise<void>((resolve) => socket.once('error', () => resolve()));
  const tick = setInterval(() => socket.writable && socket.write('probe'), 20);
  try {
    await within(Promise.race([failed, closed.then(() => undefined)]), 3000, 'a write to the closed peer to fail (RST)');
  } finally {
    clearInterval(tick);
  }
}

describe('reset', () => {
  it('backend RST → the client connection is destroyed, end=reset', async () => {
    const backend = await resetServer('rst', 'data');
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }]));
    const c = await connectClient(lb.port());
    c.socket.write('trigger the reset');
    await destroyedByPeer(c.socket, c.ended, c.closed);
    const conn = await lb.logs.waitFor('conn');
    expect(conn.fields).toMatchObject({ end: 'reset', backend: at(backend.port) });
    expect(lb.listener().state.cur).toBe(0);
    expect(lb.listener().state.live.size).toBe(0);
  });

  it('client RST → the backend connection is destroyed, end=reset', async () => {
    const backend = await echoServer('echo');
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }]));
    const accepted = nextConnection(backend);
    const c = await connectClient(lb.port());
    const server = await accepted;
    expect(await c.request('ping')).toBe('ping'); // relaying
    server.removeAllListeners('end'); // do not half-close back on our own: see what lb does
    const ended = new Promise<void>((r) => server.once('end', () => r()));
    const closed = new Promise<void>((r) => server.once('close', () => r()));
    c.socket.resetAndDestroy();
    await destroyedByPeer(server, ended, closed);
    const conn = await lb.logs.waitFor('conn');
    expect(conn.fields.end).toBe('reset');
    expect(lb.listener().state.cur).toBe(0);
    expect(lb.listener().state.groups[0]!.backends[0]!.cur).toBe(0);
  });

  it('a backend that resets on accept (before any data) is a reset too, not a hang', async () => {
    const backend = await resetServer('rst-now', 'connect');
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }]));
    // lb may pass the reset on before the client's own connect has been reported to it: then the
    // connect itself fails with ECONNRESET (seen once lb accepted natively); else the open socket is reset.
    const c = await connectClient(lb.port()).catch((err: NodeJS.ErrnoException) => err);
    if (c instanceof Error) expect(c.code).toBe('ECONNRESET');
    else await destroyedByPeer(c.socket, c.ended, c.closed);
    const conn = await lb.logs.waitFor('conn');
    // The RST can beat lb's connect completion (then it is a failed connect with nothing left to try) or
    // come just after it (a reset of a relay): either way the client is closed and nothing is left open.
    expect(['reset', 'connect-failed']).toContain(conn.fields.end);
    expect(lb.listener().state.cur).toBe(0);
    expect(lb.listener().state.live.size).toBe(0);
  });
});
