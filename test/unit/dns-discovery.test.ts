// DNS discovery's pure parts: the clock of one name (TTL clamps, hold_valid, back-off, logs once per
// change), the expansion of a table into one backend per address, and the [global.dns] keys.

import { describe, expect, it } from 'vitest';
import { buildTable } from '../../src/config/pipeline.ts';
import type { DnsEntry, RoutingTable } from '../../src/config/table.ts';
import { docToToml, tableToDoc } from '../../src/config/to-toml.ts';
import { collapse, discoveryNames, expandTable, sortAddresses, srvNames } from '../../src/discovery/expand.ts';
import { NameWatch, RETRY_START_MS } from '../../src/discovery/watch.ts';

const DNS: DnsEntry = { servers: [], timeoutMs: 2000, holdValidMs: 60_000, minTtlMs: 1000, maxTtlMs: 300_000 };

describe('NameWatch', () => {
  it('asks again when the TTL runs out, clamped to min_ttl..max_ttl', () => {
    const w = new NameWatch('mail.example');
    expect(w.step({ kind: 'answer', addresses: ['10.0.0.2', '10.0.0.1'], ttlSec: 30 }, 0, DNS)).toMatchObject({
      addresses: ['10.0.0.1', '10.0.0.2'],
      changed: true,
      nextAt: 30_000,
    });
    expect(w.step({ kind: 'answer', addresses: ['10.0.0.1', '10.0.0.2'], ttlSec: 0 }, 1000, DNS)).toMatchObject({ changed: false, nextAt: 2000 });
    expect(w.step({ kind: 'answer', addresses: ['10.0.0.1', '10.0.0.2'], ttlSec: 86_400 }, 2000, DNS).nextAt).toBe(302_000);
  });

  it('keeps the last good addresses through failures for hold_valid, then gives them up', () => {
    const w = new NameWatch('mail.example');
    w.step({ kind: 'answer', addresses: ['10.0.0.1'], ttlSec: 5 }, 0, DNS);
    const f1 = w.step({ kind: 'failed', why: 'ETIMEOUT' }, 5000, DNS);
    expect(f1).toMatchObject({ addresses: ['10.0.0.1'], changed: false, nextAt: 5000 + RETRY_START_MS });
    expect(f1.note?.event).toBe('dns-failed');
    // Back-off doubles; the same state is not logged again.
    const f2 = w.step({ kind: 'failed', why: 'ETIMEOUT' }, 6000, DNS);
    expect(f2).toMatchObject({ addresses: ['10.0.0.1'], nextAt: 6000 + 2 * RETRY_START_MS, note: null });
    const expired = w.step({ kind: 'failed', why: 'ESERVFAIL' }, 60_000, DNS);
    expect(expired).toMatchObject({ addresses: [], changed: true });
    expect(expired.note?.detail).toMatch(/hold_valid ran out/);
    // Back again: one line says so.
    const back = w.step({ kind: 'answer', addresses: ['10.0.0.3'], ttlSec: 5 }, 61_000, DNS);
    expect(back).toMatchObject({ addresses: ['10.0.0.3'], changed: true, nextAt: 66_000 });
    expect(back.note?.event).toBe('dns-resolved');
  });

  it('believes NXDOMAIN / no record at once (no hold), and retries with back-off up to max_ttl', () => {
    const w = new NameWatch('gone.example');
    w.step({ kind: 'answer', addresses: ['10.0.0.1'], ttlSec: 5 }, 0, DNS);
    expect(w.step({ kind: 'none', why: 'NXDOMAIN' }, 5000, DNS)).toMatchObject({ addresses: [], changed: true });
    let last = 0;
    for (let i = 0; i < 20; i++) last = w.step({ kind: 'none', why: 'NXDOMAIN' }, 0, DNS).nextAt;
    expect(last).toBe(DNS.maxTtlMs);
  });

  it('a name whose server never answered keeps what start-up resolved (no addresses of its own), and says so once', () => {
    const w = new NameWatch('typo.example');
    const s = w.step({ kind: 'failed', why: 'ECONNREFUSED' }, 0, DNS);
    expect(s).toMatchObject({ addresses: null, changed: false });
    expect(s.note?.detail).toMatch(/no answer yet, retrying/);
    expect(w.step({ kind: 'failed', why: 'ECONNREFUSED' }, 1000, DNS).note).toBeNull();
  });
});

async function table(doc: unknown): Promise<RoutingTable> {
  const r = await buildTable(doc, { resolve: 'skip' });
  if (!r.ok) throw new Error(JSON.stringify(r.diagnostics));
  return r.table;
}

const DOC = {
  global: { dns: { servers: ['127.0.0.1:5353'], min_ttl: '1s' } },
  listeners: {
    imap: {
      listen: '127.0.0.1:0',
      groups: [
        { backends: ['mail.example:143:16', '127.0.0.1:1143', { name: 'spare', host: 'spare.example', port: 143, weight: 3 }] },
      ],
    },
  },
};

describe('expansion', () => {
  it('one backend per address, named host:port@address, keyed by its own address; others untouched', async () => {
    const t = await table(DOC);
    expect(discoveryNames(t)).toEqual(['mail.example', 'spare.example']);
    const x = expandTable(t, new Map([['mail.example', ['10.0.0.2', '10.0.0.1', '2001:db8::1']], ['spare.example', ['10.0.1.1']]]));
    const bs = x.listeners[0]!.groups[0]!.backends;
    expect(bs.map((b) => [b.name, b.key, b.address, b.maxc, b.weight])).toEqual([
      ['mail.example:143@10.0.0.1', '10.0.0.1:143', '10.0.0.1', 16, 1],
      ['mail.example:143@10.0.0.2', '10.0.0.2:143', '10.0.0.2', 16, 1],
      ['mail.example:143@2001:db8::1', '[2001:db8::1]:143', '2001:db8::1', 16, 1],
      ['127.0.0.1:1143', '127.0.0.1:1143', '127.0.0.1', 0, 1],
      ['spare@10.0.1.1', '10.0.1.1:143', '10.0.1.1', 0, 3],
    ]);
    expect(Object.isFrozen(x.listeners[0]!.groups[0]!.backends[0])).toBe(true);
  });

  it('a name without addresses has no backend; one not looked up yet stays as configured', async () => {
    const t = await table(DOC);
    const x = expandTable(t, new Map([['mail.example', []]]));
    expect(x.listeners[0]!.groups[0]!.backends.map((b) => b.name)).toEqual(['127.0.0.1:1143', 'spare']);
  });

  it('re-expands from the configured form, and show config / save write the configured form back', async () => {
    const t = await table(DOC);
    const once = expandTable(t, new Map([['mail.example', ['10.0.0.1', '10.0.0.2']]]));
    const twice = expandTable(once, new Map([['mail.example', ['10.0.0.3']]]));
    expect(twice.listeners[0]!.groups[0]!.backends.map((b) => b.name)).toEqual(['mail.example:143@10.0.0.3', '127.0.0.1:1143', 'spare']);
    expect(tableToDoc(collapse(once))).toEqual(tableToDoc(t));
    const text = docToToml(tableToDoc(once));
    expect(text).toContain('"mail.example:143:16"');
    expect(text).not.toContain('10.0.0.1');
    expect(text).toContain('dns = { servers = ["127.0.0.1:5353"], timeout = "2s", hold_valid = "10m", min_ttl = "1s", max_ttl = "5m" }');
    expect(tableToDoc(await table(tableToDoc(once)))).toEqual(tableToDoc(t));
  });

  it('a name that lost every address comes back in its place once it has one again', async () => {
    const t = await table(DOC);
    const none = expandTable(t, new Map([['mail.example', []], ['spare.example', ['10.0.1.1']]]));
    expect(none.listeners[0]!.groups[0]!.backends.map((b) => b.name)).toEqual(['127.0.0.1:1143', 'spare@10.0.1.1']);
    expect(tableToDoc(none)).toEqual(tableToDoc(t)); // show config and save still have it
    const back = expandTable(none, new Map([['mail.example', ['10.0.0.7']], ['spare.example', ['10.0.1.1']]]));
    expect(back.listeners[0]!.groups[0]!.backends.map((b) => b.name)).toEqual(['mail.example:143@10.0.0.7', '127.0.0.1:1143', 'spare@10.0.1.1']);
    expect(collapse(back)).toEqual(collapse(none));
  });

  it('without [global.dns] nothing is expanded', async () => {
    const t = await table({ ...DOC, global: {} });
    expect(discoveryNames(t)).toEqual([]);
    expect(expandTable(t, new Map([['mail.example', ['10.0.0.1']]]))).toBe(t);
  });

  it('sorts IPv4 numerically before IPv6', () => {
    expect(sortAddresses(['10.0.0.10', '::1', '10.0.0.9', '10.0.0.9', '2001:db8::1'])).toEqual(['10.0.0.9', '10.0.0.10', '2001:db8::1', '::1']);
  });
});

describe('[global.dns]', () => {
  it.each([
    [{ servers: ['dns.example:53'] }, /invalid name server/],
    [{ min_ttl: '0' }, /min_ttl must be more than 0/],
    [{ min_ttl: '10s', max_ttl: '5s' }, /max_ttl .* is shorter than min_ttl/],
    [{ refresh: '1s' }, /refresh|additional|unknown/i],
  ])('rejects %j', async (dns, why) => {
    const r = await buildTable({ ...DOC, global: { dns } }, { resolve: 'skip' });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.diagnostics.map((d) => d.message).join('\n')).toMatch(why);
  });

  it('accepts IPv6 servers with a port', async () => {
    const t = await table({ ...DOC, global: { dns: { servers: ['[::1]:5353', '127.0.0.1'] } } });
    expect(t.global.dns?.servers).toEqual(['[::1]:5353', '127.0.0.1']);
  });
});

describe('SRV backends', () => {
  const SRV_DOC = {
    global: { dns: { servers: ['127.0.0.1:5353'] } },
    listeners: {
      imap: {
        listen: '127.0.0.1:0',
        groups: [
          { backends: ['127.0.0.1:1143'] },
          { policy: 'leastconn', backends: [{ srv: '_imap._tcp.mail.example', maxc: 50 }] },
        ],
      },
    },
  };

  it('is kept aside until answered: no backend, and show config keeps it', async () => {
    const t = await table(SRV_DOC);
    expect(t.listeners[0]!.groups[1]!.backends).toEqual([]);
    expect(srvNames(t)).toEqual(['_imap._tcp.mail.example']);
    expect(discoveryNames(t)).toEqual([]);
    expect(docToToml(tableToDoc(t))).toContain('{ srv = "_imap._tcp.mail.example", maxc = 50, enabled = true }');
  });

  it('lowest priority takes its place, each higher priority is one more failover group; SRV weight is the weight', async () => {
    const t = await table(SRV_DOC);
    const srv = new Map([
      [
        '_imap._tcp.mail.example',
        [
          { priority: 20, weight: 0, port: 1993, target: 'c.mail.example' },
          { priority: 10, weight: 5, port: 143, target: 'b.mail.example' },
          { priority: 10, weight: 10, port: 143, target: 'a.mail.example' },
        ],
      ],
    ]);
    const answers = new Map([['a.mail.example', ['10.0.0.1']], ['b.mail.example', ['10.0.0.2', '10.0.0.3']], ['c.mail.example', ['10.0.0.9']]]);
    const x = expandTable(t, answers, srv);
    const groups = x.listeners[0]!.groups;
    expect(groups).toHaveLength(3);
    expect(groups[1]!.backends.map((b) => [b.name, b.key, b.weight, b.maxc])).toEqual([
      ['a.mail.example:143@10.0.0.1', '10.0.0.1:143', 10, 50],
      ['b.mail.example:143@10.0.0.2', '10.0.0.2:143', 5, 50],
      ['b.mail.example:143@10.0.0.3', '10.0.0.3:143', 5, 50],
    ]);
    expect(groups[2]!.policy).toBe('leastconn');
    expect(groups[2]!.srvLevel).toBe(1);
    expect(groups[2]!.backends.map((b) => [b.name, b.weight])).toEqual([['c.mail.example:1993@10.0.0.9', 1]]); // SRV weight 0: still usable
    // Discovery follows the targets' names too, and collapsing gives the configured table back.
    expect(collapse(x)).toEqual(collapse(t));
    expect(tableToDoc(x)).toEqual(tableToDoc(t));
    // Re-expanded with one priority only: the extra group goes.
    const y = expandTable(x, answers, new Map([['_imap._tcp.mail.example', [{ priority: 1, weight: 1, port: 143, target: 'a.mail.example' }]]]));
    expect(y.listeners[0]!.groups.map((g) => g.backends.map((b) => b.name))).toEqual([['127.0.0.1:1143'], ['a.mail.example:143@10.0.0.1']]);
  });

  it.each([
    [{ ...SRV_DOC, global: {} }, /needs \[global.dns\]/],
    [{ ...SRV_DOC, listeners: { imap: { ...SRV_DOC.listeners.imap, groups: [...SRV_DOC.listeners.imap.groups].reverse() } } }, /belongs in the listener's last group/],
    [{ ...SRV_DOC, listeners: { imap: { listen: 1, groups: [{ backends: [{ srv: 'imap.mail.example' }] }] } } }, /is not an SRV name/],
    [{ ...SRV_DOC, listeners: { imap: { listen: 1, groups: [{ backends: [{ srv: '_imap._tcp.x', host: 'x' }] }] } } }, /./],
  ])('rejects %#', async (doc, why) => {
    const r = await buildTable(doc, { resolve: 'skip' });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.diagnostics.map((d) => d.message).join('\n')).toMatch(why);
  });
});
