// `show stat` fills HAProxy's rate, rate_max and downtime columns, and `show errors` lists the last
// connect and check failures (issue 12, item 8).

import { afterEach, describe, expect, it } from 'vitest';
import { execute, type Session } from '../../src/control/commands.ts';
import { renderStatCsv } from '../../src/stats/render.ts';
import { ask, refusedPort, until } from '../helpers/backends.ts';
import { closeHealthServers, namedEcho, parseStatCsv, sleep } from '../helpers/health.ts';
import { at, cleanup, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';

afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

const reader = (): Session => ({ listener: 'web', group: 0, level: 'read', prompt: false });

function rows(lb: InProcessLb): Record<string, string>[] {
  return parseStatCsv(renderStatCsv(lb.rt.snapshot()));
}

describe('show stat rates and downtime', () => {
  it('rate counts the new connections of the last second, rate_max the most in one second', async () => {
    const a = await namedEcho('a');
    const lb = await startLb(webDoc([{ backends: [at(a.port)] }]));
    await sleep(1100); // a first sample: from here on, increases are per second
    // A burst of 6 in a few ms: it falls into one one-second sample, or at worst is split over two.
    await Promise.all(Array.from({ length: 6 }, (_, i) => ask(lb.port(), `r${i}`)));
    await until(() => Number(rows(lb).find((r) => r.svname === 'FRONTEND')!.rate_max) >= 3, 3000, 'rate_max to see the burst');
    await sleep(1100); // the sample after the burst
    const front = rows(lb).find((r) => r.svname === 'FRONTEND')!;
    const back = rows(lb).find((r) => r.svname === at(a.port))!;
    expect(Number(front.rate_max)).toBeGreaterThanOrEqual(3);
    expect(Number(front.rate_max)).toBeLessThanOrEqual(6);
    expect(back.rate_max).toBe(front.rate_max); // every client went to the one backend
    // A quiet second later the rate is back to 0, the maximum stays.
    await until(() => rows(lb).find((r) => r.svname === 'FRONTEND')!.rate === '0', 3000, 'the rate to fall back to 0');
    expect(rows(lb).find((r) => r.svname === 'FRONTEND')!.rate_max).toBe(front.rate_max);
  });

  it('connections in the first second after start count: rate_max sees them on the frontend and the server', async () => {
    // The first sample used to be the baseline, so what came before it (lb's first second) never counted.
    const a = await namedEcho('a');
    const lb = await startLb(webDoc([{ backends: [at(a.port)] }]));
    await Promise.all(Array.from({ length: 6 }, (_, i) => ask(lb.port(), `early${i}`)));
    const front = (): number => Number(rows(lb).find((r) => r.svname === 'FRONTEND')!.rate_max);
    const back = (): number => Number(rows(lb).find((r) => r.svname === at(a.port))!.rate_max);
    await until(() => front() >= 1 && back() >= 1, 3000, `rate_max to see the first second (frontend ${front()}, server ${back()})`);
    expect(front()).toBeLessThanOrEqual(6);
  });

  it('a listener a reload adds counts from its first second too', async () => {
    const a = await namedEcho('a');
    const lb = await startLb(webDoc([{ backends: [at(a.port)] }]));
    const doc = webDoc([{ backends: [at(a.port)] }]);
    (doc['listeners'] as Record<string, unknown>)['api'] = { listen: '127.0.0.1:0', groups: [{ backends: [at(a.port)] }] };
    await lb.apply(doc);
    await Promise.all(Array.from({ length: 6 }, (_, i) => ask(lb.port('api'), `new${i}`)));
    const api = (): number => Number(rows(lb).find((r) => r.pxname === 'api' && r.svname === 'FRONTEND')!.rate_max);
    await until(() => api() >= 1, 3000, `rate_max of the new listener (${api()})`);
  });

  it('downtime grows while a backend is down, and show errors names the failures', async () => {
    const dead = await refusedPort();
    const ok = await namedEcho('ok');
    const lb = await startLb(
      webDoc([{ backends: [at(dead), at(ok.port)], health: { interval: '100ms', timeout: '80ms', rise: 2, fall: 1 } }]),
    );
    await until(() => rows(lb).find((r) => r.svname === at(dead))!.status === 'DOWN', 2000, 'the dead backend to go DOWN');
    await until(() => Number(rows(lb).find((r) => r.svname === at(dead))!.downtime) >= 1, 3000, 'a second of downtime');
    expect(rows(lb).find((r) => r.svname === at(ok.port))!.downtime).toBe('0');
    const errors = (await execute(lb.rt, reader(), 'show errors')).text.split('\n');
    expect(errors.length).toBeGreaterThanOrEqual(1);
    expect(errors[0]).toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\S+Z web group 0 ${at(dead).replace(/\./g, '\\.')} check: L4CON ECONNREFUSED$`));
    expect(errors.every((l) => !l.includes(at(ok.port)))).toBe(true);
  });

  it('show errors on a quiet lb says so', async () => {
    const ok = await namedEcho('ok');
    const lb = await startLb(webDoc([{ backends: [at(ok.port)] }]));
    expect((await execute(lb.rt, reader(), 'show errors')).text).toBe('no failures recorded');
  });
});
