// Capacity-aware scheduling for a build farm (issue 5, tcpbalance's use with distcc): policy "first",
// maxc = CPUs per host, fastest host listed first, and a queue. A burst of jobs fills the fastest host's
// slots first, then the next host's, and the rest wait in the queue and go to whichever host frees a slot
// first. The fake compile backend accepts, holds the job for a while, replies with its name and closes.

import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { HOST, until, within } from '../helpers/backends.ts';
import { closeHealthServers, compileServer } from '../helpers/health.ts';
import { cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

interface Job {
  n: number;
  host: string;
  doneMs: number;
}

describe('build farm: policy first + maxc + queue', () => {
  it('a burst of 7 jobs fills fast (2), mid (1), slow (1), then queues and goes to whoever frees first', async () => {
    // Hold times: fast frees its 2 slots at ~150 ms, mid at ~350 ms, slow at ~500 ms.
    const fast = await compileServer('fast', 150);
    const mid = await compileServer('mid', 350);
    const slow = await compileServer('slow', 500);
    const lb = await startLb(
      webDoc(
        [
          {
            policy: 'first',
            backends: [
              { host: '127.0.0.1', port: fast.port, maxc: 2 },
              { host: '127.0.0.1', port: mid.port, maxc: 1 },
              { host: '127.0.0.1', port: slow.port, maxc: 1 },
            ],
          },
        ],
        { queue: { max: 20, timeout: '5s' } },
      ),
    );
    const state = lb.listener().state;
    const t0 = performance.now();
    const results: Promise<Job>[] = [];
    for (let n = 1; n <= 7; n++) {
      // Each job connects after the previous one was accepted by lb, so the arrival order is the job order.
      const s = net.connect({ host: HOST, port: lb.port() });
      s.on('error', () => undefined);
      let reply = '';
      results.push(
        within(
          new Promise<Job>((resolve, reject) => {
            s.on('connect', () => s.write(`compile job ${n}\n`));
            s.on('data', (c: Buffer) => {
              reply += c.toString();
            });
            s.on('close', () =>
              reply ? resolve({ n, host: reply, doneMs: performance.now() - t0 }) : reject(new Error(`job ${n}: closed without a reply`)),
            );
          }),
          5000,
          `job ${n} to complete`,
        ),
      );
      await until(() => state.total === n, 2000, `lb to accept job ${n}`, 1);
    }
    // Right after the burst: 4 running (fast 2, mid 1, slow 1), 3 waiting.
    const [sf, sm, ss] = state.groups[0]!.backends;
    expect([sf!.cur, sm!.cur, ss!.cur]).toEqual([2, 1, 1]);
    expect(state.queued).toBe(3);

    const jobs = await Promise.all(results);
    const order = jobs.map((j) => `job ${j.n} → ${j.host} (done at ${Math.round(j.doneMs)} ms)`);
    const byEnd = [...jobs].sort((a, b) => a.doneMs - b.doneMs).map((j) => `${j.n}:${j.host}`);
    console.log(`build farm, jobs in arrival order:\n  ${order.join('\n  ')}\n  completion order: ${byEnd.join(' ')}`);
    const hosts = jobs.map((j) => j.host);
    // The first four fill the hosts in the configured order, up to each maxc.
    expect(hosts.slice(0, 4)).toEqual(['fast', 'fast', 'mid', 'slow']);
    // Jobs 5 and 6 waited; fast frees both its slots first (~150 ms, mid not before ~350 ms).
    expect(hosts.slice(4, 6)).toEqual(['fast', 'fast']);
    // Job 7 goes to whichever frees next (fast again at ~300 ms, or mid at ~350 ms).
    expect(['fast', 'mid']).toContain(hosts[6]);
    for (const j of jobs.slice(4)) expect(j.doneMs).toBeGreaterThan(250); // they did wait for a slot
    // No host ran more jobs at once than it has CPUs (lb's own count; the hosts' view can lag by a close).
    expect([sf!.max, sm!.max, ss!.max]).toEqual([2, 1, 1]);
    expect(hosts).toHaveLength(7);
    const snap = lb.rt.snapshot().listeners[0]!;
    expect(snap.queue).toMatchObject({ cur: 0, max: 3, timeouts: 0, abandoned: 0, rejected: 0 });
    expect(snap.total).toBe(7);
    expect(snap.noBackend).toBe(0);
    // The whole burst took about two rounds of the fast host plus a little, not 7 × 150 ms in a row.
    expect(Math.max(...jobs.map((j) => j.doneMs))).toBeLessThan(1500);
  });
});
