// The compiled routing table: deeply frozen, defaults applied, one shape for both backend forms, and
// written back as TOML that compiles to the same table.

import { describe, expect, it } from 'vitest';
import { parseToml } from '../../src/config/load.ts';
import { Locator } from '../../src/config/locate.ts';
import { buildTable, type PipelineOptions } from '../../src/config/pipeline.ts';
import type { RoutingTable } from '../../src/config/table.ts';
import { docToToml, tableToDoc } from '../../src/config/to-toml.ts';

async function compile(source: string, resolve: PipelineOptions['resolve'] = 'skip'): Promise<RoutingTable> {
  const loaded = parseToml(source);
  if (!loaded.ok) throw new Error(`does not parse: ${loaded.diagnostics.map((d) => d.message).join('; ')}`);
  const result = await buildTable(loaded.doc, { resolve }, new Locator(source));
  if (!result.ok) throw new Error(`does not compile: ${result.diagnostics.map((d) => `${d.line}: ${d.message}`).join('; ')}`);
  return result.table;
}

const MINIMAL = `
[listeners.a]
listen = 18001

[[listeners.a.groups]]
backends = ["127.0.0.1"]
`;

/** Uses every key, with values other than the defaults. IP literals only, so resolving does no DNS. */
const FULL = `
[global]
drain_timeout = "1m30s"
log_format = "json"
access_log = false

[control]
listen = "127.0.0.1:18023"
socket = "/tmp/lb-test-control.sock"
socket_level = "operator"
allow = ["10.0.0.0/8", "::1/128"]
idle_timeout = 90

[defaults]
connect_timeout = "250ms"
idle_timeout = "1h"

[listeners."imap-v6"]
listen = "[::1]:18143"
source = "::1"
hash_failover = true
autodisable = true
packet_dump = "hex"
packet_dump_file = "/tmp/lb-test.dump"
connect_timeout = "1500ms"
idle_timeout = "0"

[[listeners."imap-v6".groups]]
policy = "hash"
backends = ["[::1]:18144:16", { host = "[::1]", port = "imap", maxc = 3, weight = 0 }]

[[listeners."imap-v6".groups]]
policy = "weighted"
backends = [{ host = "::1", weight = 5, enabled = false }, "[::1]::4"]

[listeners.web]
listen = ":18080"
packet_dump = "balance"

[listeners.web.queue]
max = 50
timeout = "3s"

[[listeners.web.groups]]
policy = "leastconn"
health = { interval = "5s", timeout = "500ms", rise = 1, fall = 2, send = "PING\\r\\n", expect = "/^\\\\+PONG/i", port = 18090 }
backends = [
  "127.0.0.1:18081",
  { host = "127.0.0.1", port = 18082, maxc = 10, health = { fall = 5, expect = "PONG" } },
  { host = "127.0.0.1", port = 18086, health = { enabled = false } },
]

[[listeners.web.groups]]
policy = "random"
backends = ["127.0.0.1:18083"]

[[listeners.web.groups]]
policy = "first"
backends = ["127.0.0.1:18084"]

[listeners.any]
listen = 0

[[listeners.any.groups]]
health = {}
backends = ["127.0.0.1:18085"]
`;

/** Every object and array reachable from `value`, with its path. */
function* nodes(value: unknown, path = 'table'): Generator<[string, object]> {
  if (value === null || typeof value !== 'object') return;
  yield [path, value];
  for (const [k, v] of Object.entries(value)) yield* nodes(v, Array.isArray(value) ? `${path}[${k}]` : `${path}.${k}`);
}

describe('the compiled routing table is deeply frozen', () => {
  it.each<PipelineOptions['resolve']>(['skip', 'warning', 'error'])(
    'every object and array in it is frozen (resolve: %s)',
    async (resolve) => {
      const table = await compile(FULL, resolve);
      const all = [...nodes(table)];
      expect(all.length).toBeGreaterThan(30);
      expect(all.filter(([, node]) => !Object.isFrozen(node)).map(([path]) => path)).toEqual([]);
    },
  );

  it('assigning at the top level, in global, defaults and control throws a TypeError', async () => {
    const table = (await compile(FULL)) as any;
    expect(() => (table.listeners = [])).toThrow(TypeError);
    expect(() => (table.global.drainTimeoutMs = 0)).toThrow(TypeError);
    expect(() => (table.defaults.connectTimeoutMs = 1)).toThrow(TypeError);
    expect(() => (table.control.socketLevel = "read")).toThrow(TypeError);
    expect(() => (table.control.listen.port = 1)).toThrow(TypeError);
    expect(table.control.socketLevel).toBe("operator");
  });

  it('assigning to or deleting from a listener throws a TypeError', async () => {
    const listener = (await compile(FULL)).listeners[0] as any;
    expect(() => (listener.name = 'other')).toThrow(TypeError);
    expect(() => (listener.connectTimeoutMs = 1)).toThrow(TypeError);
    expect(() => (listener.listen.port = 1)).toThrow(TypeError);
    expect(() => delete listener.source).toThrow(TypeError);
    expect(() => (listener.extra = 1)).toThrow(TypeError);
    expect(listener.name).toBe('imap-v6');
    expect(listener.source).toBe('::1');
  });

  it('assigning to a group or a backend throws a TypeError', async () => {
    const group = (await compile(FULL)).listeners[0]!.groups[0] as any;
    expect(() => (group.policy = 'rr')).toThrow(TypeError);
    const backend = group.backends[0];
    expect(() => (backend.maxc = 99)).toThrow(TypeError);
    expect(() => (backend.enabled = false)).toThrow(TypeError);
    expect(() => (backend.address = '10.0.0.1')).toThrow(TypeError);
    expect([group.policy, backend.maxc, backend.enabled]).toEqual(['hash', 16, true]);
  });

  it('arrays cannot be pushed to, spliced or assigned by index', async () => {
    const table = (await compile(FULL)) as any;
    const groups = table.listeners[0].groups;
    expect(() => table.listeners.push(table.listeners[0])).toThrow(TypeError);
    expect(() => groups.push(groups[0])).toThrow(TypeError);
    expect(() => groups[0].backends.push(groups[0].backends[0])).toThrow(TypeError);
    expect(() => groups[0].backends.splice(0, 1)).toThrow(TypeError);
    expect(() => (groups[1].backends[0] = groups[0].backends[0])).toThrow(TypeError);
    expect(() => table.control.allow.push('0.0.0.0/0')).toThrow(TypeError);
    expect(table.listeners).toHaveLength(3);
    expect(groups[0].backends).toHaveLength(2);
    expect(table.control.allow).toEqual(['10.0.0.0/8', '::1/128']);
  });
});

describe('defaults are applied', () => {
  it('to a minimal config: global, defaults, listener, group and backend', async () => {
    const table = await compile(MINIMAL);
    expect(table.global).toMatchObject({ drainTimeoutMs: 30_000, logFormat: 'text', logLevel: 'info', accessLog: true, stateFile: null });
    expect(table.defaults).toEqual({ connectTimeoutMs: 5000, idleTimeoutMs: 0 });
    expect(table.control).toBeNull();
    // toMatchObject: keys added to the table later need not break this test; arrays still match exactly.
    expect(table.listeners).toMatchObject([
      {
        name: 'a',
        listen: { host: null, port: 18001 },
        source: null,
        hashFailover: false,
        autodisable: false,
        packetDump: 'off',
        packetDumpFile: null,
        connectTimeoutMs: 5000,
        idleTimeoutMs: 0,
        backlog: 511,
        queue: null,
        groups: [
          {
            policy: 'rr',
            health: null,
            backends: [
              {
                host: '127.0.0.1',
                port: 18001,
                address: '127.0.0.1',
                maxc: 0,
                weight: 1,
                enabled: true,
                key: '127.0.0.1:18001',
                health: null,
              },
            ],
          },
        ],
      },
    ]);
  });

  it('to a [control] table that only sets listen', async () => {
    const table = await compile(`[control]\nlisten = "127.0.0.1:18023"\n${MINIMAL}`);
    expect(table.control).toEqual({
      listen: { host: '127.0.0.1', port: 18023 },
      socket: null,
      level: 'read',
      socketLevel: 'admin',
      tokenFile: null,
      allow: ['127.0.0.0/8', '::1/128'],
      idleTimeoutMs: 300_000,
      http: null,
      httpLevel: 'read',
    });
  });

  it('to [queue] and health tables given without keys', async () => {
    const table = await compile(`
[listeners.a]
listen = 18001
queue = {}
[[listeners.a.groups]]
health = {}
backends = ["127.0.0.1:18002", { host = "127.0.0.1", port = 18003, health = { rise = 4 } }]
`);
    const listener = table.listeners[0]!;
    const group = listener.groups[0]!;
    expect(listener.queue).toEqual({ max: 100, timeoutMs: 10_000 });
    const defaults = { intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3, send: null, expect: null, port: null };
    expect(group.health).toEqual(defaults);
    expect(group.backends.map((b) => b.health)).toEqual([defaults, { ...defaults, rise: 4 }]);
  });

  it('[defaults] is inherited by listeners that do not override it', async () => {
    const table = await compile(`
[defaults]
connect_timeout = "2s"
idle_timeout = "10m"

[listeners.inherits]
listen = 18001
[[listeners.inherits.groups]]
backends = ["127.0.0.1:18002"]

[listeners.overrides]
listen = 18003
connect_timeout = "750ms"
idle_timeout = 0
[[listeners.overrides.groups]]
backends = ["127.0.0.1:18004"]
`);
    expect(table.defaults).toEqual({ connectTimeoutMs: 2000, idleTimeoutMs: 600_000 });
    expect(table.listeners.map((l) => [l.name, l.connectTimeoutMs, l.idleTimeoutMs])).toEqual([
      ['inherits', 2000, 600_000],
      ['overrides', 750, 0],
    ]);
  });

  it('a backend without a port takes the listener port, also in later groups', async () => {
    const table = await compile(`
[listeners.a]
listen = "127.0.0.1:18143"
[[listeners.a.groups]]
backends = ["127.0.0.1::8"]
[[listeners.a.groups]]
backends = [{ host = "::1" }]
`);
    const ports = table.listeners[0]!.groups.map((g) => g.backends.map((b) => [b.port, b.key]));
    expect(ports).toEqual([[[18143, '127.0.0.1:18143']], [[18143, '[::1]:18143']]]);
  });
});

describe('health checks', () => {
  it('a health send string keeps its TOML escapes and a /regex/flags expect is split', async () => {
    const web = (await compile(FULL)).listeners.find((l) => l.name === 'web')!;
    const [plainBackend, overridden, unchecked] = web.groups[0]!.backends;
    expect(web.groups[0]!.health).toEqual({
      intervalMs: 5000,
      timeoutMs: 500,
      rise: 1,
      fall: 2,
      send: 'PING\r\n',
      expect: { regex: '^\\+PONG', flags: 'i' },
      port: 18090,
    });
    expect(plainBackend!.health).toEqual(web.groups[0]!.health);
    expect(overridden!.health).toMatchObject({ fall: 5, rise: 1, expect: { text: 'PONG' }, send: 'PING\r\n' });
    expect(unchecked!.health).toBeNull();
  });
});

describe('string and table backends', () => {
  it.each<[string, string, string]>([
    ['host:port:maxc', '"127.0.0.1:18002:16"', '{ host = "127.0.0.1", port = 18002, maxc = 16 }'],
    ['host alone', '"127.0.0.1"', '{ host = "127.0.0.1" }'],
    ['host::maxc', '"127.0.0.1::8"', '{ host = "127.0.0.1", maxc = 8 }'],
    ['a service name as port', '"127.0.0.1:imap"', '{ host = "127.0.0.1", port = "imap" }'],
    ['IPv6 in brackets', '"[::1]:143:16"', '{ host = "::1", port = 143, maxc = 16 }'],
    ['IPv6 with brackets in the table form', '"[::1]:143:16"', '{ host = "[::1]", port = 143, maxc = 16 }'],
    ['a host name', '"localhost:18002"', '{ host = "localhost", port = 18002 }'],
  ])('compile to the same entry: %s', async (_what, asString, asTable) => {
    const table = await compile(`
[listeners.a]
listen = 18001
[[listeners.a.groups]]
backends = [${asString}]
[[listeners.a.groups]]
backends = [${asTable}]
`);
    const [fromString, fromTable] = table.listeners[0]!.groups.map((g) => g.backends[0]);
    expect(fromString).toBeDefined();
    expect(fromTable).toEqual(fromString);
  });
});

describe('tableToDoc → docToToml → parse → compile', () => {
  it.each([
    ['a minimal config', MINIMAL],
    ['a config using every key', FULL],
  ])('gives back an equal table for %s', async (_what, source) => {
    const table = await compile(source);
    const text = docToToml(tableToDoc(table));
    const again = await compile(text);
    expect(again).toEqual(table);
  });

  it('writes a header given to docToToml before the config', () => {
    const text = docToToml({ listeners: { a: { listen: 1, groups: [{ backends: ['h'] }] } } }, '# made by a test\n\n');
    expect(text.startsWith('# made by a test\n\n[listeners.a]\n')).toBe(true);
  });
});
