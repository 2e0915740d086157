// Capacity-aware scheduling for a build farm (issue 5, tcpbalance's use with distcc): policy "first",
// maxc = CPUs per host, fastest host listed first, and a queue. A burst of jobs fills the fastest host's
// slots first, then the next host's, and the rest wait in the queue and go to whichever host frees a slot
// first. The fake compile hosts hold every job until the test finishes it, so the order of events decides
// each assertion, never the machine's speed (a fixed hold time once let a slow connect see a slot already
// freed).

import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HOST, until, within } from '../helpers/backends.ts';
import { closeHealthServers, compileServer, type CompileHost } from '../helpers/health.ts';
import { cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

describe('build farm: policy first + maxc + queue', () => {
  it('a burst of 7 jobs fills fast (2), mid (1), slow (1), then queues and goes to whoever frees first', async () => {
    const fast = await compileServer('fast');
    const mid = await compileServer('mid');
    const slow = await compileServer('slow');
    const hosts: CompileHost[] = [fast, mid, slow];
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
        // The queue timeout only bounds a broken run: every waiter here is released by a finished job.
        { queue: { max: 20, timeout: '15s' } },
      ),
    );
    const state = lb.listener().state;
    const [sf, sm, ss] = state.groups[0]!.backends;
    const replies: Promise<string>[] = [];
    for (let n = 1; n <= 7; n++) {
      const s = net.connect({ host: HOST, port: lb.port() });
      s.on('error', () => undefined);
      let reply = '';
      const reply$ = within(
        new Promise<string>((resolve, reject) => {
          s.on('connect', () => s.write(`compile job ${n}\n`));
          s.on('data', (c: Buffer) => {
            reply += c.toString();
          });
          s.on('close', () => (reply ? resolve(reply) : reject(new Error(`job ${n}: closed without a reply`))));
        }),
        15_000,
        `job ${n} to complete`,
      );
      reply$.catch(() => undefined); // awaited below; a failed assertion before then must not leave it unhandled
      replies.push(reply$);
      // Each job connects after lb placed the previous one (a slot claimed, or a place in the queue), so the
      // arrival order is the job order even when two workers accept them.
      await until(() => sf!.cur + sm!.cur + ss!.cur + state.queued === n, 5000, `lb to place job ${n}`, 1);
    }
    const where = (): string => hosts.map((h) => `${h.name}: [${h.jobs.join(', ')}]`).join('; ');
    const settled = (what: string, cond: () => boolean): Promise<void> => until(cond, 5000, `${what} (${where()})`);

    // The burst: the first four fill the hosts in the configured order, up to each maxc; three wait.
    await settled('jobs 1-4 at their hosts', () => fast.held.size === 2 && mid.held.size === 1 && slow.held.size === 1);
    // Jobs 1 and 2 connect to fast at once (possibly from two workers), so their lines arrive in either order.
    expect([[...fast.jobs].sort(), mid.jobs, slow.jobs]).toEqual([[1, 2], [3], [4]]);
    expect([sf!.cur, sm!.cur, ss!.cur]).toEqual([2, 1, 1]);
    expect(state.queued).toBe(3);

    // fast frees a slot: the head of the queue (job 5) takes it, and nobody else moves.
    fast.finish(1);
    await settled('job 5 to reach fast', () => fast.jobs.length === 3);
    expect(fast.jobs.slice(2)).toEqual([5]);
    expect(state.queued).toBe(2);
    // fast frees its other slot: job 6.
    fast.finish(2);
    await settled('job 6 to reach fast', () => fast.jobs.length === 4);
    expect(fast.jobs.slice(2)).toEqual([5, 6]);
    // mid frees next while fast is full again: job 7 goes to mid, the first host with a free slot.
    mid.finish(3);
    await settled('job 7 to reach mid', () => mid.jobs.length === 2);
    expect(mid.jobs).toEqual([3, 7]);
    expect(state.queued).toBe(0);

    for (const [h, n] of [[slow, 4], [fast, 5], [fast, 6], [mid, 7]] as const) h.finish(n);
    expect(await Promise.all(replies)).toEqual(['fast', 'fast', 'mid', 'slow', 'fast', 'fast', 'mid']);
    // No host ran more jobs at once than it has CPUs (lb's own count).
    expect([sf!.max, sm!.max, ss!.max]).toEqual([2, 1, 1]);
    const snap = lb.rt.snapshot().listeners[0]!;
    expect(snap.queue).toMatchObject({ cur: 0, max: 3, timeouts: 0, abandoned: 0, rejected: 0 });
    expect(snap.total).toBe(7);
    expect(snap.noBackend).toBe(0);
  });
});
