// balance's own command line on the real CLI: `lb PORT 127.0.0.1:A 127.0.0.1:B ! 127.0.0.1:C` forwards
// traffic round robin over group 0 and falls over to group 1 when group 0 is down; -p dumps to stdout.
//
// PORT must be given on the command line, so it is a free port found by binding a temporary server to
// port 0 and closing it (freePort): another process could grab it in between; the window is tiny.

import { afterEach, describe, expect, it } from 'vitest';
import { hashOrder } from '../../src/balance/select.ts';
import type { BackendEntry } from '../../src/config/table.ts';
import { ask, backendOf, echoServer, freePort, refusedPort, until, within } from '../helpers/backends.ts';
import { cleanup, spawnLb, type LbProcess } from '../helpers/lb.ts';

afterEach(cleanup);

async function stopGracefully(lb: LbProcess): Promise<void> {
  lb.proc.kill('SIGTERM');
  expect(await within(lb.exited, 5000, 'lb to exit on SIGTERM')).toEqual({ code: 0, signal: null });
}

describe('balance command line', () => {
  it('lb PORT A B ! C: round robin over A and B, C unused while they are up', async () => {
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => echoServer(n, { prefix: true })));
    const port = await freePort();
    const lb = await spawnLb([String(port), `127.0.0.1:${a!.port}`, `127.0.0.1:${b!.port}`, '!', `127.0.0.1:${c!.port}`]);
    expect(lb.ports[String(port)]).toBe(port);
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) seen.push(backendOf(await ask(port, `req${i}`)));
    expect(seen).toEqual(['a', 'b', 'a', 'b']);
    expect(c!.accepted).toBe(0);
    await lb.logs.waitFor('conn', { count: 4 });
    expect(lb.logs.all('conn').map((l) => l.fields.group)).toEqual(['0', '0', '0', '0']);
    // The listener is dual stack ([::]): the IPv4 client is logged as 127.0.0.1, not ::ffff:127.0.0.1.
    expect(lb.logs.all('conn').every((l) => /^127\.0\.0\.1:\d+$/.test(l.fields.client ?? ''))).toBe(true);
    await stopGracefully(lb);
  });

  it('lb PORT A B C %: on a dual-stack listener 127.0.0.1 (::ffff:127.0.0.1) hashes as 127.0.0.1', async () => {
    const servers = await Promise.all(['a', 'b', 'c'].map((n) => echoServer(n, { prefix: true })));
    const keys = servers.map((s) => `127.0.0.1:${s.port}`);
    const expected = servers[hashOrder('127.0.0.1', keys.map((key) => ({ key }) as BackendEntry))[0]!]!.name;
    const port = await freePort();
    const lb = await spawnLb([String(port), ...keys, '%']);
    for (let i = 0; i < 3; i++) expect(backendOf(await ask(port, `req${i}`))).toBe(expected);
    await lb.logs.waitFor('conn', { count: 3 });
    await stopGracefully(lb);
  });

  it('group 1 takes the clients when group 0 is down', async () => {
    const c = await echoServer('c', { prefix: true });
    const [deadA, deadB] = [await refusedPort(), await refusedPort()];
    const port = await freePort();
    const lb = await spawnLb(['-b', '127.0.0.1', String(port), `127.0.0.1:${deadA}`, `127.0.0.1:${deadB}`, '!', `127.0.0.1:${c.port}`]);
    for (let i = 0; i < 3; i++) expect(backendOf(await ask(port, `req${i}`))).toBe('c');
    await lb.logs.waitFor('conn', { count: 3 }); // log lines are written in batches: wait, then read all
    const failed = lb.logs.all('connect-failed').map((l) => l.fields.backend);
    expect(failed.sort()).toEqual([`127.0.0.1:${deadA}`, `127.0.0.1:${deadB}`].sort()); // once each: ejected after
    await lb.logs.waitFor('conn', { count: 3 });
    expect(lb.logs.all('conn').map((l) => l.fields.group)).toEqual(['1', '1', '1']);
    await stopGracefully(lb);
  });

  it('-p dumps every chunk to stdout in balance\'s format', async () => {
    const e = await echoServer('7001', { prefix: true });
    const port = await freePort();
    const lb = await spawnLb(['-b', '127.0.0.1', '-p', String(port), `127.0.0.1:${e.port}`]);
    expect(await ask(port, 'ping\tpong\n')).toBe('[7001] ping\tpong\n');
    const expected = '-> 10\nping\\09pong\\0A\n\n-< 17\n[7001] ping\\09pong\\0A\n\n';
    await until(() => lb.stdout().startsWith(expected), 3000, `stdout to start with ${JSON.stringify(expected)}`);
    await lb.logs.waitFor('conn');
    await stopGracefully(lb);
  });
});
