// The Last.fm scenario (issue 5): the main server is powered off (its SYNs vanish), so without health
// checks every client waited the connect timeout and clients with shorter timeouts failed although the
// backup was fine. With checks: group 0 = the dead main (interval 100 ms, timeout 100 ms, fall 2),
// group 1 = a healthy backup, connect_timeout 1 s. Once the checks took the main down, every new client
// with a 1 s timeout of its own is served by the backup at once; when the main comes back on the same
// port it rejoins after `rise` checks and gets the new clients again.

import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { deadHost, HOST, until, within } from '../helpers/backends.ts';
import { closeHealthServers, namedEcho } from '../helpers/health.ts';
import { at, cleanup, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';

afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

/** A client as Last.fm's were: gives up after 1 s. Resolves with who answered and how long it took. */
async function client(port: number, msg: string): Promise<{ from: string; ms: number }> {
  const t0 = performance.now();
  const s = net.connect({ host: HOST, port });
  s.setTimeout(1000);
  let got = '';
  try {
    const answer = await within(
      new Promise<string>((resolve, reject) => {
        s.on('connect', () => s.write(msg));
        s.on('data', (c: Buffer) => {
          got += c.toString();
          const m = /^\[([^\]]+)\] /.exec(got);
          if (m && got.endsWith(msg)) resolve(m[1]!);
        });
        s.on('timeout', () => reject(new Error(`client "${msg}" timed out after 1 s (got ${JSON.stringify(got)})`)));
        s.on('error', reject);
        s.on('close', () => reject(new Error(`client "${msg}" closed without an answer (got ${JSON.stringify(got)})`)));
      }),
      1500,
      `an answer to ${msg}`,
    );
    return { from: answer, ms: performance.now() - t0 };
  } finally {
    s.destroy();
  }
}

const mainStatus = (lb: InProcessLb): string => lb.rt.snapshot().listeners[0]!.groups[0]!.backends[0]!.status;

describe('Last.fm failover', () => {
  it('dead main → backup without waiting; the main rejoins on the same port after rise checks', async () => {
    const dead = await deadHost();
    const backup = await namedEcho('backup');
    const lb = await startLb(
      webDoc(
        [
          { policy: 'rr', backends: [at(dead.port)], health: { interval: '100ms', timeout: '100ms', rise: 2, fall: 2 } },
          { policy: 'rr', backends: [at(backup.port)] },
        ],
        { connect_timeout: '1s' },
      ),
    );
    const started = Date.now(); // checks start once every worker is serving

    // fall × interval (+ the random phase of the first check, + margin): poll until the checks said so.
    await until(() => mainStatus(lb) === 'dis', 1500, `the main to be taken down by checks (is ${mainStatus(lb)})`, 5);
    const downMs = Date.now() - started;
    expect(downMs).toBeLessThan(800);
    const down = await lb.logs.waitFor({ event: 'health', to: 'DOWN' });
    expect(down.fields).toMatchObject({ backend: at(dead.port), from: 'UP', to: 'DOWN', status: 'L4TOUT', reason: 'timeout', by: 'check' });
    expect(Number(down.fields.check_ms)).toBeGreaterThanOrEqual(95); // the check's own timeout, not connect_timeout
    expect(Number(down.fields.check_ms)).toBeLessThan(400);

    // Every new client is served by the backup at once — no 1 s connect timeout paid, none fails.
    const mainState = lb.listener().state.groups[0]!.backends[0]!;
    const triedBefore = mainState.attempts;
    const served: { from: string; ms: number }[] = [];
    for (let i = 0; i < 5; i++) served.push(await client(lb.port(), `seq ${i}`));
    served.push(...(await Promise.all([0, 1, 2, 3, 4].map((i) => client(lb.port(), `par ${i}`)))));
    console.log(`while the main is down: ${served.map((s) => `${s.from} ${Math.round(s.ms)}ms`).join(', ')}`);
    for (const s of served) {
      expect(s.from).toBe('backup');
      expect(s.ms).toBeLessThan(200);
    }
    expect(mainState.attempts).toBe(triedBefore); // no client even tried the main
    expect(lb.logs.all('connect-failed')).toEqual([]);

    // The main comes back on the same port: stop the SYN-dropping process, listen there with node.
    const port = dead.port;
    await dead.close();
    const mark = lb.logs.mark();
    await namedEcho('main', port);
    const back = Date.now();
    await until(() => mainStatus(lb) === 'ENA', 1500, `the main to rejoin (is ${mainStatus(lb)})`, 5);
    const upMs = Date.now() - back;
    expect(upMs).toBeGreaterThanOrEqual(80); // rise = 2: two passing checks, an interval apart
    expect(upMs).toBeLessThan(700);
    const up = await lb.logs.waitFor({ event: 'health', to: 'UP' }, { from: mark });
    expect(up.fields).toMatchObject({ backend: at(port), from: 'DOWN', to: 'UP', status: 'L4OK', by: 'check' });

    const after: { from: string; ms: number }[] = [];
    for (let i = 0; i < 3; i++) after.push(await client(lb.port(), `back ${i}`));
    console.log(`after the main rejoined: ${after.map((s) => `${s.from} ${Math.round(s.ms)}ms`).join(', ')}`);
    expect(after.map((s) => s.from)).toEqual(['main', 'main', 'main']);
    expect(lb.rt.snapshot().listeners[0]!.groups[0]!.backends[0]!.check).toMatchObject({ status: 'L4OK', downs: 1 });
  });
});
