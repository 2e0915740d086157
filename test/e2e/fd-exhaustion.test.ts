// Out of file descriptors (issue 11, item 10): at the process's descriptor limit a health check cannot
// open its socket (EMFILE). That says nothing about the backend: it must not be marked DOWN (once every
// backend is checked that would be a full outage), and the cause is logged once per burst.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { echoServer, until } from '../helpers/backends.ts';
import { cleanup, spawnLb } from '../helpers/lb.ts';

let dir = '';
const held: net.Socket[] = [];
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-fd-'));
});
afterEach(async () => {
  for (const s of held.splice(0)) s.destroy();
  await cleanup();
  rmSync(dir, { recursive: true, force: true });
});

describe('descriptor exhaustion', () => {
  it('health checks failing with EMFILE do not take a healthy backend down; the cause is logged', async () => {
    const echo = await echoServer('e');
    const file = path.join(dir, 'lb.toml');
    writeFileSync(
      file,
      [
        '[global]',
        'workers = 1',
        // Far above what 72 descriptors allow (lb warns so at start): the default, derived from the
        // descriptor limit, would stop accepting long before lb runs out, which is what it is for.
        'maxconn = 10000',
        'drain_timeout = "0"',
        '[listeners.web]',
        'listen = "127.0.0.1:0"',
        '[[listeners.web.groups]]',
        `backends = ["127.0.0.1:${echo.port}"]`,
        'health = { interval = "100ms", timeout = "500ms", rise = 1, fall = 2 }',
        '',
      ].join('\n'),
    );
    // A low descriptor limit that lb starts under, then filled by clients each holding two (theirs and
    // their backend connection's).
    const lb = await spawnLb(['run', file], { wrap: ['prlimit', '--nofile=72:72'] });
    const port = lb.ports.web!;
    // Clients until lb runs out: each one lb relays holds two descriptors, and once none is left libuv
    // sheds what it cannot accept, so descriptors come free now and then (a connection whose connect
    // finished lets go of a third); new clients keep taking them until a check or a connect hits EMFILE.
    for (let i = 0; i < 400 && lb.logs.all({ event: 'local-resource-error' }).length === 0; i++) {
      const s = net.connect({ host: '127.0.0.1', port });
      s.on('error', () => undefined);
      held.push(s);
      await new Promise<void>((resolve) => {
        s.once('connect', () => resolve());
        s.once('close', () => resolve());
      });
    }
    await lb.logs.waitFor({ event: 'local-resource-error' }, { ms: 8000 });
    // Several check intervals at the limit: fall = 2 would have taken it down twice over by now.
    await new Promise((r) => setTimeout(r, 600));
    expect(lb.logs.all({ event: 'health', to: 'DOWN' })).toEqual([]);
    // Once descriptors are free again, traffic flows to the backend, which was never marked down.
    for (const s of held.splice(0)) s.destroy();
    await until(() => echo.accepted > 0, 3000, 'the backend to be reached');
    expect(lb.logs.all({ event: 'health', to: 'DOWN' })).toEqual([]);
    // Logged once per burst, not once per failed check.
    expect(lb.logs.all({ event: 'local-resource-error' }).length).toBeLessThanOrEqual(2);
  });
});
