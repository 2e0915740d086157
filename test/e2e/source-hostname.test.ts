// A host name as the source address (`source = "localhost"`, balance's `-B localhost`): it is resolved
// with the backends at start (and on reload) and connections bind to the address, not the name. Before,
// the name went to net.connect's localAddress, which throws ERR_INVALID_IP_ADDRESS: the first client or
// health check crashed lb.

import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ask, backendOf, until } from '../helpers/backends.ts';
import { runLb } from '../helpers/cli.ts';
import { closeHealthServers, serve } from '../helpers/health.ts';
import { at, cleanup, spawnLb, startLb, webDoc } from '../helpers/lb.ts';

afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

/** An echo backend (prefix `[name] `) that records the peer address of every connection it accepts. */
async function recordingEcho(name: string) {
  const peers: string[] = [];
  const b = await serve(name, (s) => {
    peers.push(s.remoteAddress ?? '?');
    s.on('data', (c: Buffer) => s.write(Buffer.concat([Buffer.from(`[${name}] `), c])));
    s.on('end', () => s.end());
  });
  return Object.assign(b, { peers });
}

describe('source = a host name', () => {
  it('is resolved into the table; the name is kept for display', async () => {
    const a = await recordingEcho('a');
    const lb = await startLb(webDoc([{ backends: [at(a.port)] }], { source: 'localhost' }), { resolve: 'error' });
    const entry = lb.rt.table.listeners[0]!;
    expect(entry.sourceHost).toBe('localhost');
    expect(net.isIP(entry.source ?? '')).toBe(4); // the IPv4 address of localhost, like the backend
  });

  it('relays a client: the connection to the backend binds to the resolved address', async () => {
    const a = await recordingEcho('a');
    const lb = await startLb(webDoc([{ backends: [at(a.port)] }], { source: 'localhost' }), { resolve: 'error' });
    expect(backendOf(await ask(lb.port(), 'one'))).toBe('a');
    expect(backendOf(await ask(lb.port(), 'two'))).toBe('a');
    expect(a.peers).toEqual([lb.rt.table.listeners[0]!.source, lb.rt.table.listeners[0]!.source]);
  });

  it('health checks connect from it and pass', async () => {
    const a = await recordingEcho('a');
    const health = { interval: '100ms', timeout: '500ms', rise: 1, fall: 1 };
    const lb = await startLb(webDoc([{ backends: [at(a.port)], health }], { source: 'localhost' }), { resolve: 'error' });
    await until(() => a.peers.length >= 3, 3000, 'three health checks to reach the backend');
    const check = lb.rt.snapshot().listeners[0]!.groups[0]!.backends[0]!.check;
    expect(check?.status).toBe('L4OK');
    expect(lb.logs.all({ event: 'health', to: 'DOWN' })).toHaveLength(0);
    expect(backendOf(await ask(lb.port(), 'after checks'))).toBe('a');
  });
});

describe("balance's -B with a host name", () => {
  it('the real lb relays with -B localhost', async () => {
    const a = await recordingEcho('a');
    const lb = await spawnLb(['-b', '127.0.0.1', '-B', 'localhost', '0', at(a.port)]);
    const port = Object.values(lb.ports)[0]!;
    expect(backendOf(await ask(port, 'hello'))).toBe('a');
    expect(backendOf(await ask(port, 'again'))).toBe('a');
    expect(lb.proc.exitCode).toBeNull();
  });

  it('--print-toml writes the name, not the address', async () => {
    const r = await runLb(['--print-toml', '-B', 'localhost', '8888', '127.0.0.1:80']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^source = "localhost"$/m);
  });
});
