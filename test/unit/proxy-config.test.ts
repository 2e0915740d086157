// PROXY protocol keys: accept_proxy per listener, send_proxy and check_send_proxy per group or backend,
// compiled into the table and written back by --print-toml / show config.

import { describe, expect, it } from 'vitest';
import { parseToml } from '../../src/config/load.ts';
import { Locator } from '../../src/config/locate.ts';
import { buildTable } from '../../src/config/pipeline.ts';
import { checkSendProxyOf, sendProxyOf, type RoutingTable } from '../../src/config/table.ts';
import { docToToml, tableToDoc } from '../../src/config/to-toml.ts';

async function build(source: string): Promise<{ table: RoutingTable | null; messages: string[] }> {
  const loaded = parseToml(source);
  if (!loaded.ok) return { table: null, messages: loaded.diagnostics.map((d) => d.message) };
  const r = await buildTable(loaded.doc, { resolve: 'skip' }, new Locator(source));
  return r.ok ? { table: r.table, messages: r.warnings.map((d) => d.message) } : { table: null, messages: r.diagnostics.map((d) => `${d.path.join('.')}: ${d.message}`) };
}

async function compile(source: string): Promise<RoutingTable> {
  const r = await build(source);
  if (!r.table) throw new Error(`does not compile: ${r.messages.join('; ')}`);
  return r.table;
}

const CONFIG = `
[listeners.edge]
listen = "127.0.0.1:18110"
accept_proxy = true
accept_proxy_timeout = "750ms"

[[listeners.edge.groups]]
send_proxy = "v2"
health = { interval = "1s", port = 9000 }
backends = [
  "127.0.0.1:9001",
  { host = "127.0.0.1", port = 9002, send_proxy = "off" },
  { host = "127.0.0.1", port = 9003, send_proxy = "v1", check_send_proxy = true },
]

[[listeners.edge.groups]]
send_proxy = "v1"
check_send_proxy = false
backends = ["127.0.0.1:9004"]

[listeners.plain]
listen = "127.0.0.1:18111"

[[listeners.plain.groups]]
health = { interval = "1s" }
backends = ["127.0.0.1:9005", { host = "127.0.0.1", port = 9006, check_send_proxy = true }]
`;

describe('PROXY protocol configuration', () => {
  it('compiles accept_proxy with its timeout, off by default', async () => {
    const t = await compile(CONFIG);
    expect(t.listeners[0]!.acceptProxy).toEqual({ timeoutMs: 750 });
    expect(t.listeners[1]!.acceptProxy).toBeNull();
    const dflt = await compile(CONFIG.replace('accept_proxy_timeout = "750ms"\n', ''));
    expect(dflt.listeners[0]!.acceptProxy).toEqual({ timeoutMs: 3000 });
  });

  it('send_proxy: the group gives it, a backend overrides it ("off" included)', async () => {
    const t = await compile(CONFIG);
    const [g0, g1] = t.listeners[0]!.groups;
    expect(g0!.backends.map((b) => sendProxyOf(g0!, b))).toEqual(['v2', null, 'v1']);
    expect(sendProxyOf(g1!, g1!.backends[0]!)).toBe('v1');
    const plain = t.listeners[1]!.groups[0]!;
    expect(sendProxyOf(plain, plain.backends[0]!)).toBeNull();
  });

  it('check_send_proxy: on by default with send_proxy unless checks use another port; v1 without send_proxy', async () => {
    const t = await compile(CONFIG);
    const [g0, g1] = t.listeners[0]!.groups;
    // The group checks port 9000, not the traffic port: no header by default (HAProxy's rule).
    expect(g0!.backends.map((b) => checkSendProxyOf(g0!, b))).toEqual([null, null, 'v1']);
    expect(checkSendProxyOf(g1!, g1!.backends[0]!)).toBeNull(); // turned off for the group
    const plain = t.listeners[1]!.groups[0]!;
    expect(plain.backends.map((b) => checkSendProxyOf(plain, b))).toEqual([null, 'v1']);
    const samePort = await compile(CONFIG.replace('health = { interval = "1s", port = 9000 }', 'health = { interval = "1s" }'));
    const s0 = samePort.listeners[0]!.groups[0]!;
    expect(s0.backends.map((b) => checkSendProxyOf(s0, b))).toEqual(['v2', null, 'v1']);
  });

  it('--print-toml / show config write every key back, and the result compiles to the same table', async () => {
    const t = await compile(CONFIG);
    const text = docToToml(tableToDoc(t));
    expect(text).toContain('accept_proxy = true');
    expect(text).toContain('accept_proxy_timeout = "750ms"');
    expect(text).toContain('send_proxy = "v2"');
    expect(text).toContain('check_send_proxy = false');
    expect(text).toMatch(/send_proxy = "off"/);
    const again = await compile(text);
    expect(again.listeners.map((l) => l.acceptProxy)).toEqual(t.listeners.map((l) => l.acceptProxy));
    const proxies = (x: RoutingTable) =>
      x.listeners.flatMap((l) => l.groups.flatMap((g) => g.backends.map((b) => [sendProxyOf(g, b), checkSendProxyOf(g, b)])));
    expect(proxies(again)).toEqual(proxies(t));
  });

  it.each([
    ['a version that does not exist', CONFIG.replace('send_proxy = "v2"', 'send_proxy = "v3"'), /send_proxy/],
    ['"off" at the group (absent means off)', CONFIG.replace('send_proxy = "v2"', 'send_proxy = "off"'), /send_proxy/],
    ['a zero header timeout', CONFIG.replace('"750ms"', '"0"'), /accept_proxy_timeout must be more than 0/],
    ['accept_proxy given a version', CONFIG.replace('accept_proxy = true', 'accept_proxy = "v2"'), /accept_proxy/],
  ])('rejects %s', async (_what, source, why) => {
    const r = await build(source);
    expect(r.table).toBeNull();
    expect(r.messages.join('\n')).toMatch(why);
  });
});
