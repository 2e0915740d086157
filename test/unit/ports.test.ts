// The start-up check of a listen address (src/supervisor/ports.ts) against real sockets: it binds
// alone and never listens, so the address is free again when it returns and nobody was accepted by it.

import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { loadAddon } from '../../src/addon.ts';
import { checkListen, portCheck } from '../../src/supervisor/ports.ts';
import { tableFrom, webDoc } from '../helpers/lb.ts';

const holders: net.Server[] = [];
afterEach(async () => {
  await Promise.all(holders.splice(0).map((h) => new Promise<void>((r) => h.close(() => r()))));
});

async function hold(host: string): Promise<number> {
  const h = net.createServer();
  holders.push(h);
  await new Promise<void>((r) => h.listen({ port: 0, host }, r));
  return (h.address() as net.AddressInfo).port;
}

async function entry(listen: string) {
  return (await tableFrom(webDoc([{ backends: ['127.0.0.1:9'] }], { listen }))).listeners[0]!;
}

describe('checkListen', () => {
  it('uses bind without listen where the addon is built', () => {
    expect(portCheck().method).toBe(loadAddon().ok ? 'bind' : 'listen');
  });

  it('port 0: the kernel picks a port, which is free again (a server can listen on it at once)', async () => {
    const got = await checkListen(await entry('127.0.0.1:0'));
    expect(got.address).toBe('127.0.0.1');
    expect(got.port).toBeGreaterThan(0);
    const s = net.createServer();
    holders.push(s);
    await new Promise<void>((r, j) => s.once('error', j).listen({ port: got.port, host: '127.0.0.1' }, r));
  });

  it('a name is resolved as Node resolves it (localhost)', async () => {
    const got = await checkListen(await entry('localhost:0'));
    expect(['127.0.0.1', '::1']).toContain(got.address);
    expect(got.port).toBeGreaterThan(0);
  });

  it('no host: the dual-stack address, and a port held on 0.0.0.0 is in use', async () => {
    const free = await checkListen(await entry(':0'));
    expect(['::', '0.0.0.0']).toContain(free.address);
    const port = await hold('0.0.0.0');
    await expect(checkListen(await entry(`:${port}`))).rejects.toMatchObject({ code: 'LB_BIND', message: `listener web: cannot listen on :${port}: EADDRINUSE` });
  });

  it('an address that is not this host: EADDRNOTAVAIL, as the workers would get', async () => {
    await expect(checkListen(await entry('192.0.2.1:0'))).rejects.toMatchObject({ code: 'LB_BIND', message: 'listener web: cannot listen on 192.0.2.1:0: EADDRNOTAVAIL' });
  });
});
