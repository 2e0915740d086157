// Failover for one client (refused → next, connect timeout on a blackholed backend → next) and passive
// ejection: once a backend failed, the next clients skip it instead of paying its timeout again.

import { afterEach, describe, expect, it } from 'vitest';
import { ask, backendOf, connectClient, deadHost, echoServer, refusedPort, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

describe('failover', () => {
  it('refused → the next backend of the group, transparently for the client', async () => {
    const ok = await echoServer('ok', { prefix: true });
    const dead = await refusedPort();
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(dead), at(ok.port)] }]));
    expect(backendOf(await ask(lb.port(), 'hi'))).toBe('ok');
    const failed = await lb.logs.waitFor('connect-failed');
    expect(failed.fields).toMatchObject({ backend: at(dead), reason: 'ECONNREFUSED', listener: 'web', group: '0' });
    const conn = await lb.logs.waitFor('conn');
    expect(conn.fields).toMatchObject({ backend: at(ok.port), end: 'client-close' });
    const [sd, so] = lb.listener().state.groups[0]!.backends;
    expect([sd!.attempts, sd!.failures, sd!.total]).toEqual([1, 1, 0]);
    expect([so!.attempts, so!.failures, so!.total]).toEqual([1, 0, 1]);
  });

  it('refused in every backend of group 0 → group 1', async () => {
    const spare = await echoServer('spare', { prefix: true });
    const [d1, d2] = [await refusedPort(), await refusedPort()];
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(d1), at(d2)] }, { policy: 'rr', backends: [at(spare.port)] }]));
    expect(backendOf(await ask(lb.port(), 'hi'))).toBe('spare');
    await lb.logs.waitFor('connect-failed', { count: 2 });
    expect(lb.logs.all('connect-failed').map((l) => l.fields.backend).sort()).toEqual([at(d1), at(d2)].sort());
  });

  it('connect timeout on a blackholed backend → the next one; a second client does not wait again', async () => {
    const dead = await deadHost();
    const ok = await echoServer('ok', { prefix: true });
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(dead.port), at(ok.port)] }], { connect_timeout: '400ms' }));

    let t = Date.now();
    expect(backendOf(await ask(lb.port(), 'first'))).toBe('ok');
    const firstMs = Date.now() - t;
    expect(firstMs).toBeGreaterThanOrEqual(350); // it did wait for the connect timeout ...
    expect(firstMs).toBeLessThan(2500); // ... once, not SYN retries (1 s, 3 s, ...)
    const failed = await lb.logs.waitFor('connect-failed');
    expect(failed.fields).toMatchObject({ backend: at(dead.port), reason: 'ETIMEDOUT', retry_ms: '1000' });

    // Passive ejection: the dead backend is skipped for its back-off, so these clients are served at once.
    t = Date.now();
    for (let i = 0; i < 3; i++) expect(backendOf(await ask(lb.port(), `next ${i}`))).toBe('ok');
    expect(Date.now() - t).toBeLessThan(350);
    const sd = lb.listener().state.groups[0]!.backends[0]!;
    expect(sd.attempts).toBe(1);
    expect(sd.failures).toBe(1);
    expect(lb.logs.all('connect-failed')).toHaveLength(1);
  });

  it('after the back-off one client probes the dead backend again (and it is ejected for twice as long)', async () => {
    const dead = await refusedPort();
    const ok = await echoServer('ok', { prefix: true });
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(dead), at(ok.port)] }]));
    await ask(lb.port(), 'a');
    const sd = lb.listener().state.groups[0]!.backends[0]!;
    expect(sd.backoffMs).toBe(1000);
    await ask(lb.port(), 'b');
    expect(sd.attempts).toBe(1);
    // Wait out the back-off (there is no event for "time passed"; poll the state lb exposes).
    const until = sd.ejectedUntil;
    await new Promise((r) => setTimeout(r, Math.max(0, until - Date.now()) + 20));
    // The rr cursor may land on either backend: two clients make sure one of them probes.
    await ask(lb.port(), 'c');
    await ask(lb.port(), 'd');
    expect(sd.attempts).toBe(2);
    expect(sd.failures).toBe(2);
    expect(sd.backoffMs).toBe(2000);
  });

  it('autodisable: a failed backend stays out until an operator enables it', async () => {
    const dead = await refusedPort();
    const ok = await echoServer('ok', { prefix: true });
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(dead), at(ok.port)] }], { autodisable: true }));
    await ask(lb.port(), 'a');
    const sd = lb.listener().state.groups[0]!.backends[0]!;
    expect(sd.autoDisabled).toBe(true);
    const failed = await lb.logs.waitFor('connect-failed');
    expect(failed.fields.action).toMatch(/autodisabled/);
    for (let i = 0; i < 3; i++) await ask(lb.port(), `x${i}`);
    expect(sd.attempts).toBe(1);
  });

  it('a client that resets while lb is still connecting: cleaned up by the connect timeout at the latest', async () => {
    // By design lb reads nothing from a client before its backend is connected (the kernel holds early
    // bytes, lb buffers none), so a client's RST is seen when the connect ends: bounded by connect_timeout.
    const dead = await deadHost();
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(dead.port)] }], { connect_timeout: '300ms' }));
    const c = await connectClient(lb.port());
    await until(() => lb.listener().state.groups[0]!.backends[0]!.cur === 1, 2000, 'lb to start connecting');
    const t0 = Date.now();
    c.socket.resetAndDestroy();
    const conn = await lb.logs.waitFor('conn', { ms: 2000 });
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(conn.fields).toMatchObject({ sent: '0', rcvd: '0' });
    const st = lb.listener().state;
    expect([st.cur, st.cur, st.groups[0]!.backends[0]!.cur]).toEqual([0, 0, 0]);
  });

  it('a client that closes (FIN) while lb is connecting: cleaned up by the connect timeout at the latest', async () => {
    // lb does not read a client before its backend is connected (no unbounded buffering), so a plain
    // FIN is only seen once the connect ends; then nothing may stay open.
    const dead = await deadHost();
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(dead.port)] }], { connect_timeout: '300ms' }));
    const c = await connectClient(lb.port());
    await until(() => lb.listener().state.groups[0]!.backends[0]!.cur === 1, 2000, 'lb to start connecting');
    c.socket.end();
    await lb.logs.waitFor('conn', { ms: 2000 });
    const st = lb.listener().state;
    expect([st.cur, st.cur, st.groups[0]!.backends[0]!.cur]).toEqual([0, 0, 0]);
  });

  it('nothing usable: the client is closed at once, counted and logged', async () => {
    const [d1, d2] = [await refusedPort(), await refusedPort()];
    const lb = await startLb(webDoc([{ policy: 'rr', backends: [at(d1)] }, { policy: 'rr', backends: [at(d2)] }]));
    const c = await connectClient(lb.port());
    // A FIN ('end': the test client is half-open capable) or a reset ('close'): both are "closed at once".
    await within(Promise.race([c.ended, c.closed]), 2000, 'lb to close the client');
    expect(c.received().length).toBe(0);
    const noBackend = await lb.logs.waitFor('no-backend');
    expect(noBackend.fields.tried).toBe('2');
    const conn = await lb.logs.waitFor('conn');
    expect(conn.fields.end).toBe('connect-failed');
    expect(lb.listener().state.noBackend).toBe(1);
    // Both are ejected now: the next client is refused without any connect attempt.
    const c2 = await connectClient(lb.port());
    await within(Promise.race([c2.ended, c2.closed]), 2000, 'lb to close the second client');
    const second = await lb.logs.waitFor('conn', { count: 2 });
    expect(second.fields.end).toBe('no-backend');
    expect(lb.listener().state.noBackend).toBe(2);
    expect(lb.logs.all('connect-failed')).toHaveLength(2);
    expect(lb.listener().state.cur).toBe(0);
  });
});
