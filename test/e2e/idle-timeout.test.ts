// idle_timeout (balance -T): a relay with no traffic either way for that long is closed (both sides,
// `end=idle-timeout`); traffic in either direction keeps it alive.

import { afterEach, describe, expect, it } from 'vitest';
import { connectClient, echoServer, nextConnection, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

const IDLE_MS = 400;

describe('idle timeout', () => {
  it('an idle relay is closed on both sides after idle_timeout', async () => {
    const backend = await echoServer('echo');
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }], { idle_timeout: `${IDLE_MS}ms` }));
    const accepted = nextConnection(backend);
    const c = await connectClient(lb.port());
    const server = await accepted;
    const serverClosed = new Promise<void>((r) => server.once('close', () => r()));
    expect(await c.request('hello')).toBe('hello');
    const t = Date.now();
    await within(Promise.race([c.ended, c.closed]), IDLE_MS + 2000, 'lb to close the idle client');
    const waited = Date.now() - t;
    expect(waited).toBeGreaterThanOrEqual(IDLE_MS - 50);
    await within(serverClosed, 2000, 'lb to close the idle backend connection');
    const conn = await lb.logs.waitFor('conn');
    expect(conn.fields.end).toBe('idle-timeout');
    expect(Number(conn.fields.ms)).toBeGreaterThanOrEqual(IDLE_MS - 50);
    expect(lb.listener().state.cur).toBe(0);
  });

  it('traffic client → backend keeps the relay open past the timeout', async () => {
    const backend = await echoServer('echo');
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }], { idle_timeout: `${IDLE_MS}ms` }));
    const c = await connectClient(lb.port());
    const start = Date.now();
    // Talk every 100 ms for 2.5 × the timeout: never idle that long.
    for (let i = 0; Date.now() - start < IDLE_MS * 2.5; i++) {
      expect(await c.request(`tick${i};`)).toBe(`tick${i};`);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(c.socket.destroyed).toBe(false);
    expect(lb.logs.all('conn')).toHaveLength(0);
  });

  it('traffic backend → client alone also keeps it open', async () => {
    const backend = await echoServer('talker');
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }], { idle_timeout: `${IDLE_MS}ms` }));
    const accepted = nextConnection(backend);
    const c = await connectClient(lb.port());
    const server = await accepted;
    const start = Date.now();
    for (let i = 0; Date.now() - start < IDLE_MS * 2.5; i++) {
      server.write(`push${i};`);
      await c.waitFor((b) => b.toString().includes(`push${i};`), 2000, `push ${i}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(c.socket.destroyed).toBe(false);
    expect(lb.logs.all('conn')).toHaveLength(0);
    // And once it stops, the timeout does fire.
    await within(Promise.race([c.ended, c.closed]), IDLE_MS + 2000, 'the idle timeout after the pushes stop');
    expect((await lb.logs.waitFor('conn')).fields.end).toBe('idle-timeout');
  });
});
