// hash groups through a real lb: the client IP (127.0.0.1 here) picks the backend, the same one every time,
// the one the published rendezvous order predicts; an unusable hashed backend skips the group unless
// hash_failover is set.

import { afterEach, describe, expect, it } from 'vitest';
import { hashOrder } from '../../src/balance/select.ts';
import { ask, backendOf, echoServer, type TestServer } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

const keyed = (keys: string[]) => keys.map((key) => ({ key }) as Parameters<typeof hashOrder>[1][number]);

async function echoes(names: string[]): Promise<TestServer[]> {
  return Promise.all(names.map((n) => echoServer(n, { prefix: true })));
}

describe('hash: same client, same backend', () => {
  it('every connection from 127.0.0.1 goes to the backend its hash order names', async () => {
    const servers = await echoes(['a', 'b', 'c']);
    const keys = servers.map((s) => at(s.port));
    const lb = await startLb(webDoc([{ policy: 'hash', backends: keys }]));
    const expected = servers[hashOrder('127.0.0.1', keyed(keys))[0]!]!.name;
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add(backendOf(await ask(lb.port(), `q${i}`)));
    expect([...seen]).toEqual([expected]);
    // The other backends saw nothing.
    for (const s of servers) expect(s.accepted).toBe(s.name === expected ? 6 : 0);
  });

  it('a second lb instance with the same backends maps the client the same way', async () => {
    const servers = await echoes(['a', 'b', 'c', 'd']);
    const keys = servers.map((s) => at(s.port));
    const lb1 = await startLb(webDoc([{ policy: 'hash', backends: keys }]));
    // Same backends listed in another order: the mapping depends on host:port, not on the position.
    const lb2 = await startLb(webDoc([{ policy: 'hash', backends: [...keys].reverse() }]));
    const one = backendOf(await ask(lb1.port(), 'x'));
    const two = backendOf(await ask(lb2.port(), 'y'));
    expect(two).toBe(one);
  });

  it('without hash_failover an unusable hashed backend sends the client to the next group', async () => {
    const servers = await echoes(['a', 'b', 'c']);
    const spare = await echoServer('spare', { prefix: true });
    const keys = servers.map((s) => at(s.port));
    const top = hashOrder('127.0.0.1', keyed(keys))[0]!;
    // The hashed backend goes away (its key stays listed, so the hash order is unchanged): refused.
    await servers[top]!.close();
    const lb = await startLb(webDoc([{ policy: 'hash', backends: keys }, { policy: 'rr', backends: [at(spare.port)] }]));
    expect(backendOf(await ask(lb.port(), 'x'))).toBe('spare');
    // While it is ejected the next client goes straight to the spare group, without another attempt.
    expect(backendOf(await ask(lb.port(), 'y'))).toBe('spare');
    expect(lb.listener().state.groups[0]!.backends[top]!.attempts).toBe(1);
    for (const s of servers) expect(s.accepted).toBe(0);
  });

  it('with hash_failover the next backend in hash order takes the client', async () => {
    const servers = await echoes(['a', 'b', 'c']);
    const spare = await echoServer('spare', { prefix: true });
    const keys = servers.map((s) => at(s.port));
    const order = hashOrder('127.0.0.1', keyed(keys));
    // Stop the first choice; the listed key stays, so the hash order is unchanged.
    await servers[order[0]!]!.close();
    const lb = await startLb(
      webDoc([{ policy: 'hash', backends: keys }, { policy: 'rr', backends: [at(spare.port)] }], { hash_failover: true }),
    );
    const second = servers[order[1]!]!.name;
    expect(backendOf(await ask(lb.port(), 'x'))).toBe(second);
    expect(backendOf(await ask(lb.port(), 'y'))).toBe(second);
    expect(spare.accepted).toBe(0);
    const failed = await lb.logs.waitFor({ event: 'connect-failed', backend: keys[order[0]!]! });
    expect(failed.fields.reason).toBe('ECONNREFUSED');
  });
});
