// DNS discovery against a real DNS server: Debian's dnsmasq (installed by .ci/run) on a loopback port,
// serving a name from a hosts file with a 1 s TTL. The test changes the file (dnsmasq re-reads it on
// SIGHUP) and checks that lb adds and drains backends within TTL + a margin, with no failed client
// connection meanwhile; that stopping the DNS server keeps the last good set; and that a name which does
// not resolve at start takes no traffic and is picked up once it does.

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net, { type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { connectClient, freePort, track, until, within } from '../helpers/backends.ts';
import { cleanup, spawnLb, startLb, type InProcessLb } from '../helpers/lb.ts';
import { Resolver } from 'node:dns/promises';
import { DnsDiscovery, lookupName } from '../../src/discovery/dns.ts';
import { runLb } from '../helpers/cli.ts';

afterEach(cleanup);

/** A real dnsmasq answering for *.lb.test from `hosts` (re-read on SIGHUP), every answer with TTL 1 s. */
async function dnsmasq(
  hostsText: string,
  extra: readonly string[] = [],
): Promise<{ port: number; setHosts(text: string): Promise<void>; stop(): Promise<void>; restart(extra?: readonly string[]): Promise<void> }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'lb-dnsmasq-'));
  const hosts = path.join(dir, 'hosts');
  writeFileSync(hosts, hostsText);
  const port = await freePort();
  let proc: ChildProcess | null = null;
  let output = '';
  let args = extra;
  const launch = async (): Promise<void> => {
    const p = spawn(
      '/usr/sbin/dnsmasq',
      ['-k', '--conf-file=/dev/null', `--port=${port}`, '--listen-address=127.0.0.1', '--bind-interfaces', '--no-resolv', '--no-hosts',
        `--addn-hosts=${hosts}`, '--local-ttl=1', '--local=/lb.test/', `--pid-file=${dir}/pid`, '--user=root', '--log-facility=-', ...args],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    proc = p;
    p.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    // Ready once it says it read the hosts file (or fails).
    await within(
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (output.includes(`read ${hosts}`)) resolve();
        };
        p.stdout!.on('data', check);
        p.stderr!.on('data', check);
        p.once('exit', (code) => reject(new Error(`dnsmasq exited (${code}):\n${output}`)));
        check();
      }),
      5000,
      `dnsmasq to start:\n${output}`,
    );
  };
  const stop = async (): Promise<void> => {
    const p = proc;
    proc = null;
    if (p && p.exitCode === null && p.signalCode === null) {
      const exited = once(p, 'exit');
      p.kill('SIGKILL');
      await within(exited, 5000, 'dnsmasq to exit');
    }
  };
  await launch();
  track({
    close: async () => {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  });
  return {
    port,
    async setHosts(text) {
      writeFileSync(hosts, text);
      const reads = output.split(`read ${hosts}`).length;
      proc!.kill('SIGHUP');
      await until(() => output.split(`read ${hosts}`).length > reads, 3000, 'dnsmasq to re-read its hosts file');
    },
    stop,
    /** Starts it again on the same port (with other options: dnsmasq reads --srv-host only at start). */
    async restart(next?: readonly string[]) {
      await stop();
      if (next) args = next;
      output = '';
      await launch();
    },
  };
}

/** Echo servers on one port at several loopback addresses; each prefixes its answers with its address. */
async function echoesAt(addresses: readonly string[]): Promise<number> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = await freePort();
    const servers: Server[] = [];
    try {
      for (const a of addresses) servers.push(await listenEcho(a, port));
      for (const s of servers) {
        const sockets = new Set<Socket>();
        s.on('connection', (c: Socket) => {
          sockets.add(c);
          c.on('close', () => sockets.delete(c));
        });
        track({
          close: async () => {
            for (const c of sockets) c.destroy();
            await new Promise<void>((r) => s.close(() => r()));
          },
        });
      }
      return port;
    } catch {
      for (const s of servers) s.close(); // the port was taken at one of the addresses: another port
    }
  }
  throw new Error('no port free at every address');
}

function listenEcho(address: string, port: number): Promise<Server> {
  const server = net.createServer((c) => {
    c.on('error', () => undefined);
    c.on('data', (d: Buffer) => c.write(`[${address}] ${d.toString()}`));
    c.on('end', () => c.end());
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => {
      server.removeListener('error', reject);
      resolve(server);
    });
  });
}

async function answerFrom(port: number, what = 'ping'): Promise<string> {
  const c = await connectClient(port);
  try {
    const r = await c.request(what, 3000);
    return /^\[([^\]]+)\]/.exec(r)![1]!;
  } finally {
    await c.close();
  }
}

function addresses(lb: InProcessLb): string[] {
  return lb.rt.table.listeners[0]!.groups[0]!.backends.map((b) => b.address);
}

async function discoveringLb(dnsPort: number, backendPort: number, name = 'app.lb.test', hold = '1m'): Promise<{ lb: InProcessLb; discovery: DnsDiscovery }> {
  const lb = await startLb({
    global: { access_log: false, dns: { servers: [`127.0.0.1:${dnsPort}`], timeout: '500ms', min_ttl: '1s', max_ttl: '2s', hold_valid: hold } },
    listeners: { web: { listen: '127.0.0.1:0', connect_timeout: '1s', groups: [{ policy: 'rr', backends: [`${name}:${backendPort}`] }] } },
  });
  const discovery = new DnsDiscovery(lb.rt, lb.rt.log);
  track({ close: () => discovery.stop() });
  await within(discovery.start(), 3000, 'the first lookups');
  return { lb, discovery };
}

describe('DNS discovery with dnsmasq', () => {
  it('every address is a backend; a changed record adds and drains within TTL + margin, no client fails', async () => {
    const port = await echoesAt(['127.0.0.2', '127.0.0.3', '127.0.0.4']);
    const dns = await dnsmasq('127.0.0.2 app.lb.test\n127.0.0.3 app.lb.test\n');
    const { lb } = await discoveringLb(dns.port, port);
    expect(addresses(lb)).toEqual(['127.0.0.2', '127.0.0.3']);
    expect(lb.rt.table.listeners[0]!.groups[0]!.backends.map((b) => b.name)).toEqual([`app.lb.test:${port}@127.0.0.2`, `app.lb.test:${port}@127.0.0.3`]);
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) seen.add(await answerFrom(lb.port()));
    expect([...seen].sort()).toEqual(['127.0.0.2', '127.0.0.3']);

    // A connection to .3 that stays open across the change: drained, not cut.
    let held = await connectClient(lb.port());
    while ((await held.request('who')).startsWith('[127.0.0.2]')) {
      await held.close();
      held = await connectClient(lb.port());
    }
    // Clients keep coming while the record changes: none may fail.
    let failures = 0;
    let served = 0;
    let stop = false;
    const load = (async () => {
      for (let i = 0; i < 2000 && !stop; i++) {
        try {
          await answerFrom(lb.port());
          served++;
        } catch {
          failures++;
        }
      }
    })();
    const t0 = Date.now();
    await dns.setHosts('127.0.0.2 app.lb.test\n127.0.0.4 app.lb.test\n');
    await until(() => addresses(lb).join() === '127.0.0.2,127.0.0.4', 4000, 'the new address set (TTL 1 s + margin)');
    const took = Date.now() - t0;
    await until(() => served > 20, 3000, 'clients after the change');
    stop = true;
    await within(load, 5000, 'the client loop');
    expect(failures).toBe(0);
    expect(took).toBeLessThan(3500);
    const after = new Set<string>();
    for (let i = 0; i < 4; i++) after.add(await answerFrom(lb.port()));
    expect([...after].sort()).toEqual(['127.0.0.2', '127.0.0.4']);
    expect(await held.request('still there')).toBe('[127.0.0.3] still there');
    await held.close();
  });

  it('a DNS outage keeps the last good set (hold_valid), logged once, not once per lookup', async () => {
    const port = await echoesAt(['127.0.0.2', '127.0.0.3']);
    const dns = await dnsmasq('127.0.0.2 app.lb.test\n127.0.0.3 app.lb.test\n');
    const { lb } = await discoveringLb(dns.port, port);
    expect(addresses(lb)).toEqual(['127.0.0.2', '127.0.0.3']);
    await dns.stop();
    const mark = lb.logs.mark();
    // TTL 1 s, retries at 1 s then 2 s: three lookups or more fail in 4 s.
    await lb.logs.waitFor({ event: 'dns-failed', name: 'app.lb.test' }, { from: mark, ms: 3000 });
    await new Promise((r) => setTimeout(r, 3000));
    expect(addresses(lb)).toEqual(['127.0.0.2', '127.0.0.3']);
    expect(lb.logs.all({ event: 'dns-failed' }).length).toBe(1);
    expect(await answerFrom(lb.port())).toMatch(/^127\.0\.0\.[23]$/);
  });

  it('a record set past the table limit keeps the running backends, said once; a set that fits applies', async () => {
    const port = await echoesAt(['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5', '127.0.0.6']);
    const dns = await dnsmasq('127.0.0.2 app.lb.test\n127.0.0.3 app.lb.test\n');
    // The limit lowered to 3 backends: the name's two addresses and one fixed backend fill it.
    const lb = await startLb(
      {
        global: { access_log: false, dns: { servers: [`127.0.0.1:${dns.port}`], timeout: '500ms', min_ttl: '1s', max_ttl: '2s' } },
        listeners: { web: { listen: '127.0.0.1:0', connect_timeout: '1s', groups: [{ policy: 'rr', backends: [`app.lb.test:${port}`, `127.0.0.5:${port}`] }] } },
      },
      { tableLimits: { listeners: 10, groups: 10, backends: 3 } },
    );
    const discovery = new DnsDiscovery(lb.rt, lb.rt.log);
    track({ close: () => discovery.stop() });
    await within(discovery.start(), 3000, 'the first lookups');
    expect(addresses(lb)).toEqual(['127.0.0.2', '127.0.0.3', '127.0.0.5']);

    const refused = { event: 'dns-apply-failed', code: 'LB_TABLE_LIMIT' };
    await dns.setHosts('127.0.0.2 app.lb.test\n127.0.0.3 app.lb.test\n127.0.0.4 app.lb.test\n');
    const line = await lb.logs.waitFor(refused, { ms: 5000 });
    expect(line.level).toBe('warn');
    expect(line.fields['error']).toMatch(/^listeners\.web\.groups\[0\]\.backends\[3\]: one backend too many: a table may have at most 3 backends/);
    expect(addresses(lb)).toEqual(['127.0.0.2', '127.0.0.3', '127.0.0.5']);
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add(await answerFrom(lb.port()));
    expect([...seen].sort()).toEqual(['127.0.0.2', '127.0.0.3', '127.0.0.5']);

    // Another set past the limit: refused again, not said again.
    await dns.setHosts('127.0.0.2 app.lb.test\n127.0.0.4 app.lb.test\n127.0.0.6 app.lb.test\n');
    await lb.logs.waitFor({ event: 'dns-resolved', name: 'app.lb.test', detail: '127.0.0.2,127.0.0.4,127.0.0.6 (ttl 1s)' }, { ms: 5000 });
    // One that fits: applied (its cycle starts after the refused one ended, so by then both were tried).
    await dns.setHosts('127.0.0.4 app.lb.test\n127.0.0.6 app.lb.test\n');
    await until(() => addresses(lb).join() === '127.0.0.4,127.0.0.6,127.0.0.5', 5000, 'the set that fits');
    expect(lb.logs.all(refused)).toHaveLength(1);
    expect(lb.logs.all('dns-apply-failed')).toHaveLength(1);
  });

  it('hold_valid runs out: the name has no backend; it comes back when the server does', async () => {
    const port = await echoesAt(['127.0.0.2']);
    const dns = await dnsmasq('127.0.0.2 app.lb.test\n');
    const { lb } = await discoveringLb(dns.port, port, 'app.lb.test', '2s');
    await dns.stop();
    await until(() => addresses(lb).length === 0, 6000, 'hold_valid to run out');
    await lb.logs.waitFor((l) => l.event === 'dns-failed' && /hold_valid ran out/.test(l.fields['detail'] ?? ''));
    await dns.restart();
    await until(() => addresses(lb).join() === '127.0.0.2', 6000, 'the name to resolve again');
    expect(await answerFrom(lb.port())).toBe('127.0.0.2');
  });

  it('a name that does not resolve at start takes no traffic, and is picked up once it does', async () => {
    const port = await echoesAt(['127.0.0.3']);
    const dns = await dnsmasq('127.0.0.2 other.lb.test\n');
    const { lb } = await discoveringLb(dns.port, port, 'late.lb.test');
    expect(addresses(lb)).toEqual([]);
    await lb.logs.waitFor({ event: 'dns-no-address', name: 'late.lb.test' });
    const c = await connectClient(lb.port());
    await within(c.ended, 3000, 'the client to be closed (no backend)');
    await dns.setHosts('127.0.0.3 late.lb.test\n');
    await until(() => addresses(lb).join() === '127.0.0.3', 5000, 'the name to be picked up (back-off 1 s, 2 s)');
    expect(await answerFrom(lb.port())).toBe('127.0.0.3');
  });
});

describe('SRV backends with dnsmasq', () => {
  it('targets of the lowest priority serve, the next priority is the failover group, and records are followed', async () => {
    const port = await echoesAt(['127.0.0.2', '127.0.0.3', '127.0.0.4']);
    const srv = (target: string, prio: number, weight = 10): string => `--srv-host=_imap._tcp.lb.test,${target},${port},${prio},${weight}`;
    const dns = await dnsmasq('127.0.0.2 t1.lb.test\n127.0.0.3 t2.lb.test\n127.0.0.4 t3.lb.test\n', [srv('t1.lb.test', 10), srv('t2.lb.test', 10), srv('t3.lb.test', 20)]);
    const lb = await startLb({
      global: { access_log: false, dns: { servers: [`127.0.0.1:${dns.port}`], timeout: '500ms', min_ttl: '1s', max_ttl: '2s' } },
      listeners: { web: { listen: '127.0.0.1:0', connect_timeout: '1s', groups: [{ backends: [{ srv: '_imap._tcp.lb.test', maxc: 5 }] }] } },
    });
    const discovery = new DnsDiscovery(lb.rt, lb.rt.log);
    track({ close: () => discovery.stop() });
    await within(discovery.start(), 3000, 'the first lookups');
    const groups = (): string[][] => lb.rt.table.listeners[0]!.groups.map((g) => g.backends.map((b) => b.address));
    expect(groups()).toEqual([['127.0.0.2', '127.0.0.3'], ['127.0.0.4']]);
    expect(lb.rt.table.listeners[0]!.groups[0]!.backends.map((b) => [b.name, b.maxc])).toEqual([
      [`t1.lb.test:${port}@127.0.0.2`, 5],
      [`t2.lb.test:${port}@127.0.0.3`, 5],
    ]);
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add(await answerFrom(lb.port()));
    expect([...seen].sort()).toEqual(['127.0.0.2', '127.0.0.3']);
    // t1 and t2 leave the records: t3 (priority 20) is all that is left, in the first group.
    await dns.restart([srv('t3.lb.test', 20)]);
    await until(() => JSON.stringify(groups()) === JSON.stringify([['127.0.0.4']]), 5000, 'the new SRV records (re-read every min_ttl)');
    expect(await answerFrom(lb.port())).toBe('127.0.0.4');
  });
});

describe('lb --check with [global.dns]', () => {
  it('warns about an SRV name without records and a host name that does not resolve, and passes', async () => {
    const dns = await dnsmasq('127.0.0.2 ok.lb.test\n', ['--srv-host=_imap._tcp.lb.test,ok.lb.test,143,0,0']);
    const dir = mkdtempSync(path.join(tmpdir(), 'lb-dns-check-'));
    track({ close: async () => rmSync(dir, { recursive: true, force: true }) });
    const file = path.join(dir, 'lb.toml');
    writeFileSync(
      file,
      `[global.dns]\nservers = ["127.0.0.1:${dns.port}"]\ntimeout = "500ms"\n` +
        `[listeners.a]\nlisten = "127.0.0.1:0"\n[[listeners.a.groups]]\nbackends = ["typo.lb.test:143"]\n[[listeners.a.groups]]\nbackends = [{ srv = "_imap._tcp.lb.test" }]\n` +
        `[listeners.b]\nlisten = "127.0.0.1:0"\n[[listeners.b.groups]]\nbackends = [{ srv = "_imaq._tcp.lb.test" }]\n`,
    );
    const r = await runLb(['--check', file]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/groups\[0\]\.backends\[0\]: warning: cannot resolve host "typo\.lb\.test"/);
    expect(r.stderr).toMatch(/listeners\.b\.groups\[0\]\.backends\[0\]\.srv: warning: cannot resolve SRV name "_imaq\._tcp\.lb\.test": ENOTFOUND/);
    expect(r.stderr).not.toMatch(/_imap\._tcp/);
  });
});

describe('lookupName', () => {
  it('answers with the records and their TTL; NXDOMAIN is "none"; a dead server is "failed"', async () => {
    const dns = await dnsmasq('127.0.0.2 a.lb.test\n127.0.0.3 a.lb.test\n');
    const r = new Resolver({ timeout: 500, tries: 1 });
    r.setServers([`127.0.0.1:${dns.port}`]);
    const a = await lookupName(r, 'a.lb.test', false, 1, 500);
    expect(a).toEqual({ kind: 'answer', addresses: expect.arrayContaining(['127.0.0.2', '127.0.0.3']), ttlSec: 1 });
    expect(await lookupName(r, 'nope.lb.test', false, 1, 500)).toEqual({ kind: 'none', why: 'NXDOMAIN' });
    await dns.stop();
    expect((await lookupName(r, 'a.lb.test', false, 1, 500)).kind).toBe('failed');
  });

  it("with the system's servers, a name only /etc/hosts knows resolves as the C library does", async () => {
    const r = new Resolver({ timeout: 300, tries: 1 });
    r.setServers([`127.0.0.1:${await freePort()}`]); // no DNS answers here: only the fallback can
    const got = await lookupName(r, 'localhost', true, 7, 2000);
    expect(got.kind).toBe('answer');
    if (got.kind === 'answer') {
      expect(got.addresses.some((x) => x === '127.0.0.1' || x === '::1')).toBe(true);
      expect(got.ttlSec).toBe(7);
    }
  });
});

describe('DNS discovery in lb run', () => {
  it('starts with a name only the configured server knows, and keeps following it across SIGHUP', async () => {
    const port = await echoesAt(['127.0.0.2', '127.0.0.3']);
    const dns = await dnsmasq('127.0.0.2 app.lb.test\n');
    const dir = mkdtempSync(path.join(tmpdir(), 'lb-dns-run-'));
    track({ close: async () => rmSync(dir, { recursive: true, force: true }) });
    const file = path.join(dir, 'lb.toml');
    writeFileSync(
      file,
      `[global]\naccess_log = false\nworkers = 1\n[global.dns]\nservers = ["127.0.0.1:${dns.port}"]\ntimeout = "500ms"\nmax_ttl = "2s"\n\n` +
        `[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["app.lb.test:${port}"]\n`,
    );
    const lb = await spawnLb(['run', file]);
    const ask = (when: string): Promise<string> =>
      answerFrom(lb.ports['web']!).catch((e: Error) => {
        throw new Error(`${when}: ${e.message}; lb's log:\n${lb.logs.text()}`);
      });
    // The system resolver does not know the name: a warning, and lb starts anyway.
    expect(lb.logs.text()).toMatch(/cannot resolve host "app\.lb\.test".*DNS discovery retries it/);
    expect(await ask('after start')).toBe('127.0.0.2');
    // A reload expands the file's table with the addresses discovery knows before it runs (the system
    // cannot resolve the name): there is no moment in which the name has no backend, and no TTL to wait.
    // (Log lines arrive in batches: a swap is known to follow an event by its place after that line.)
    const after = (event: string, detail?: RegExp): number =>
      lb.logs.lines.findIndex((l) => l.event === event && (detail === undefined || detail.test(l.fields['detail'] ?? ''))) + 1;
    lb.proc.kill('SIGHUP');
    await lb.logs.waitFor('reloaded', { ms: 5000 });
    expect(await ask('after the reload')).toBe('127.0.0.2');
    // And it goes on following the record.
    await dns.setHosts('127.0.0.3 app.lb.test\n');
    await lb.logs.waitFor((l) => l.event === 'dns-resolved' && /^127\.0\.0\.3 /.test(l.fields['detail'] ?? ''), { ms: 5000 });
    await lb.logs.waitFor('dns-applied', { from: after('dns-resolved', /^127\.0\.0\.3 /), ms: 5000 });
    expect(await ask('after the change')).toBe('127.0.0.3');
  });
});
