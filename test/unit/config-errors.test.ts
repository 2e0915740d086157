// `lb --check FILE` on broken configs: exit 78 and every error as `FILE:LINE[:COL]: PATH: message [CODE]`.

import { afterAll, describe, expect, it, vi } from 'vitest';
import { re, runLb, scratchDir } from '../helpers/cli.ts';

vi.mock('../../src/runtime.ts', async () => (await import('../helpers/cli.ts')).runtimeThatMustNotStart());

const dir = scratchDir();
afterAll(() => dir.remove());

const toml = (...lines: string[]): string => lines.join('\n') + '\n';

interface BrokenConfig {
  what: string;
  source: string;
  /** 1-based line the error must point at. */
  line: number;
  /** The key path printed before the message; null for TOML syntax errors, which have none. */
  path: string | null;
  message: RegExp;
}

/** `FILE:LINE:` or `FILE:LINE:COL:`, then the path, at the start of a stderr line. */
function located(file: string, line: number, path: string | null): RegExp {
  return new RegExp(`^${re(file)}:${line}(:\\d+)?: ${path === null ? '' : `${re(path)}: `}`, 'm');
}

const broken: BrokenConfig[] = [
  {
    what: 'a TOML syntax error (unclosed table header)',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: null,
    message: /TOML syntax error/,
  },
  {
    what: 'a TOML syntax error (key defined twice)',
    source: toml('[listeners.a]', 'listen = 18001', 'listen = 18002', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: null,
    message: /TOML syntax error: trying to redefine/,
  },
  {
    what: 'a TOML syntax error (bad value)',
    source: toml('[listeners.a]', 'listen = 18001', 'autodisable = yes', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: null,
    message: /TOML syntax error/,
  },
  {
    what: 'an unknown key close to a known one',
    source: toml('[listeners.a]', 'listen = 18001', 'hash_failvoer = true', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: 'listeners.a.hash_failvoer',
    message: /unknown key "hash_failvoer"; did you mean "hash_failover"\?/,
  },
  {
    what: 'an unknown key inside an inline backend table',
    source: toml(
      '[listeners.a]',
      'listen = 18001',
      '[[listeners.a.groups]]',
      'policy = "rr"',
      'backends = [{ host = "127.0.0.1", prot = 18002 }]',
    ),
    line: 5,
    path: 'listeners.a.groups[0].backends[0].prot',
    message: /unknown key "prot"; did you mean "port"\?/,
  },
  {
    what: 'an unknown top-level table',
    source: toml('[default]', 'connect_timeout = "1s"', '[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 1,
    path: 'default',
    message: /unknown key "default"; did you mean "defaults"\?/,
  },
  {
    what: 'an unknown key with nothing close: the known keys are listed',
    source: toml('[global]', 'verbosity = 3', '[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 2,
    path: 'global.verbosity',
    message: /unknown key "verbosity" \(known keys: (\w+, )*drain_timeout, log_format, access_log(, \w+)*\)/,
  },
  {
    what: 'a wrong type (string for a boolean)',
    source: toml('[listeners.a]', 'listen = 18001', 'autodisable = "yes"', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: 'listeners.a.autodisable',
    message: /must be boolean, not the string "yes"/,
  },
  {
    what: 'a wrong type (string for the groups array)',
    source: toml('[listeners.a]', 'listen = 18001', 'groups = "127.0.0.1"'),
    line: 3,
    path: 'listeners.a.groups',
    message: /must be array/,
  },
  {
    what: 'a wrong type for a backend',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1", 18002]'),
    line: 4,
    path: 'listeners.a.groups[0].backends[1]',
    message: /must be string or object, not number 18002/,
  },
  {
    what: 'a duration that does not parse (defaults)',
    source: toml('[defaults]', 'connect_timeout = "5 s"', '[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 2,
    path: 'defaults.connect_timeout',
    message: /invalid duration "5 s"/,
  },
  {
    what: 'a duration that does not parse (listener override)',
    source: toml('[listeners.a]', 'listen = 18001', 'idle_timeout = "ten minutes"', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: 'listeners.a.idle_timeout',
    message: /invalid duration "ten minutes"/,
  },
  {
    what: 'a negative integer duration',
    source: toml('[global]', 'drain_timeout = -5', '[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 2,
    path: 'global.drain_timeout',
    message: /invalid duration -5/,
  },
  {
    what: 'two listeners on the same address:port (wildcard and specific)',
    source: toml(
      '[listeners.a]',
      'listen = 18001',
      '[[listeners.a.groups]]',
      'backends = ["127.0.0.1:18101"]',
      '',
      '[listeners.b]',
      'listen = "127.0.0.1:18001"',
      '[[listeners.b.groups]]',
      'backends = ["127.0.0.1:18102"]',
    ),
    line: 7,
    path: 'listeners.b.listen',
    message: /address 127\.0\.0\.1:18001 is already used by listeners\.a/,
  },
  {
    what: 'a listener on the control port address',
    source: toml(
      '[control]',
      'listen = "127.0.0.1:18023"',
      '[listeners.a]',
      'listen = "127.0.0.1:18023"',
      '[[listeners.a.groups]]',
      'backends = ["127.0.0.1:18101"]',
    ),
    line: 4,
    path: 'listeners.a.listen',
    message: /already used by control/,
  },
  {
    what: 'an empty group',
    source: toml(
      '[listeners.a]',
      'listen = 18001',
      '[[listeners.a.groups]]',
      'backends = ["127.0.0.1"]',
      '[[listeners.a.groups]]',
      'backends = []',
    ),
    line: 6,
    path: 'listeners.a.groups[1].backends',
    message: /group has no backends/,
  },
  {
    what: 'an empty hash group',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'policy = "hash"', 'backends = []'),
    line: 5,
    path: 'listeners.a.groups[0].backends',
    message: /a hash group needs at least one backend/,
  },
  {
    what: 'a listener with no groups',
    source: toml('[listeners.a]', 'listen = 18001', 'groups = []'),
    line: 3,
    path: 'listeners.a.groups',
    message: /must have at least 1 entry/,
  },
  {
    what: 'an out-of-range listen port',
    source: toml('[listeners.a]', 'listen = 70000', '[[listeners.a.groups]]', 'backends = ["127.0.0.1:18002"]'),
    line: 2,
    path: 'listeners.a.listen',
    message: /port 70000 out of range \(0-65535\)/,
  },
  {
    what: 'an out-of-range backend port (string form)',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = [', '  "127.0.0.1:18002",', '  "127.0.0.1:65536",', ']'),
    line: 6,
    path: 'listeners.a.groups[0].backends[1]',
    message: /port 65536 out of range \(1-65535\)/,
  },
  {
    what: 'backend port 0 (table form)',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = [{ host = "127.0.0.1", port = 0 }]'),
    line: 4,
    path: 'listeners.a.groups[0].backends[0].port',
    message: /port 0 out of range \(1-65535\)/,
  },
  {
    what: 'weight < 0',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'policy = "weighted"', 'backends = [{ host = "127.0.0.1", weight = -1 }]'),
    line: 5,
    path: 'listeners.a.groups[0].backends[0].weight',
    message: /weight must be >= 0, not -1/,
  },
  {
    what: 'maxc < 0 (table form)',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = [{ host = "127.0.0.1", maxc = -1 }]'),
    line: 4,
    path: 'listeners.a.groups[0].backends[0].maxc',
    message: /must be >= 0, not -1/,
  },
  {
    what: 'maxc < 0 (string form)',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1:18002:-1"]'),
    line: 4,
    path: 'listeners.a.groups[0].backends[0]',
    message: /invalid maxc "-1"/,
  },
  {
    what: 'an unbracketed IPv6 backend',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["::1"]'),
    line: 4,
    path: 'listeners.a.groups[0].backends[0]',
    message: /must be written in brackets/,
  },
  {
    what: 'an invalid policy',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'policy = "roundrobin"', 'backends = ["127.0.0.1"]'),
    line: 4,
    path: 'listeners.a.groups[0].policy',
    message: /must be one of "rr", "hash", "leastconn", "random", "weighted", "first", not "roundrobin"/,
  },
  {
    what: 'an invalid packet_dump',
    source: toml('[listeners.a]', 'listen = 18001', 'packet_dump = "ascii"', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: 'listeners.a.packet_dump',
    message: /must be one of "off", "hex", "balance", not "ascii"/,
  },
  {
    what: 'an invalid control.allow CIDR block',
    source: toml('[control]', 'listen = "127.0.0.1:18023"', 'allow = ["10.0.0.0/33"]', '[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: 'control.allow[0]',
    message: /invalid CIDR block "10\.0\.0\.0\/33"/,
  },
  {
    what: 'a health interval of 0 in a group health table',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]', '[listeners.a.groups.health]', 'interval = "0"'),
    line: 6,
    path: 'listeners.a.groups[0].health.interval',
    message: /interval must be more than 0/,
  },
  {
    what: 'a health rise below 1',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'health = { rise = 0 }', 'backends = ["127.0.0.1"]'),
    line: 4,
    path: 'listeners.a.groups[0].health.rise',
    message: /must be >= 1, not 0/,
  },
  {
    what: 'an invalid regular expression in a backend health override',
    source: toml(
      '[listeners.a]',
      'listen = 18001',
      '[[listeners.a.groups]]',
      'backends = ["127.0.0.1:18002", { host = "127.0.0.1", port = 18003, health = { expect = "/(/" } }]',
    ),
    line: 4,
    path: 'listeners.a.groups[0].backends[1].health.expect',
    message: /invalid regular expression/,
  },
  {
    what: 'a queue max below 1',
    source: toml('[listeners.a]', 'listen = 18001', '[listeners.a.queue]', 'max = 0', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 4,
    path: 'listeners.a.queue.max',
    message: /must be >= 1, not 0/,
  },
  {
    what: 'a queue timeout that does not parse',
    source: toml('[listeners.a]', 'listen = 18001', 'queue = { timeout = "soon" }', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: 'listeners.a.queue.timeout',
    message: /invalid duration "soon"/,
  },
  {
    what: 'a missing required key (listen)',
    source: toml('[listeners.a]', 'hash_failover = true', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 1,
    path: 'listeners.a',
    message: /missing required key "listen"/,
  },
  {
    what: 'a missing required key (backends)',
    source: toml('[listeners.a]', 'listen = 18001', '', '[[listeners.a.groups]]', 'policy = "first"'),
    line: 4,
    path: 'listeners.a.groups[0]',
    message: /missing required key "backends"/,
  },
  {
    what: 'a __proto__ key',
    source: toml('[listeners.a]', 'listen = 18001', '__proto__ = { admin = true }', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: 'listeners.a.__proto__',
    message: /__proto__/,
  },
  {
    what: 'a constructor key',
    source: toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = [{ host = "127.0.0.1", constructor = 1 }]'),
    line: 4,
    path: 'listeners.a.groups[0].backends[0].constructor',
    message: /constructor/,
  },
  {
    what: 'a listener named constructor',
    source: toml('[listeners.constructor]', 'listen = 18001', '[[listeners.constructor.groups]]', 'backends = ["127.0.0.1"]'),
    line: 1,
    path: 'listeners.constructor',
    message: /constructor/,
  },
  {
    what: 'a prototype key',
    source: toml('[listeners.a]', 'listen = 18001', 'prototype = 1', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    line: 3,
    path: 'listeners.a.prototype',
    message: /prototype/,
  },
];

describe('lb --check on a broken config', () => {
  it.each(broken.map((c, i) => ({ ...c, file: `broken-${i}.toml` })))(
    'exits 78 for $what, pointing at line $line',
    async ({ source, file, line, path, message }) => {
      const filePath = dir.write(file, source);
      const { code, stdout, stderr } = await runLb(['--check', filePath]);
      expect(code).toBe(78);
      expect(stdout).toBe('');
      expect(stderr).toMatch(located(filePath, line, path));
      const errorLine = stderr.split('\n').find((l) => located(filePath, line, path).test(l));
      expect(errorLine).toMatch(message);
      expect(errorLine).toMatch(/ \[LB_[A-Z_]+\]$/);
    },
  );

  it('reports an out-of-range listen port as one error, without a follow-on error about port 0', async () => {
    const file = dir.write(
      'listen-70000.toml',
      toml('[listeners.a]', 'listen = 70000', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'),
    );
    const { code, stderr } = await runLb(['--check', file]);
    expect(code).toBe(78);
    expect(stderr.trimEnd().split('\n')).toEqual([
      expect.stringMatching(new RegExp(`^${re(file)}:2(:\\d+)?: listeners\\.a\\.listen: port 70000 out of range`)),
    ]);
  });

  it("reports an error in a group's health table once, at the group, when a backend overrides other health keys", async () => {
    const file = dir.write(
      'health-once.toml',
      toml(
        '[listeners.a]',
        'listen = 18001',
        '[[listeners.a.groups]]',
        'backends = ["127.0.0.1:18002", { host = "127.0.0.1", port = 18003, health = { fall = 5 } }]',
        '[listeners.a.groups.health]',
        'interval = "0"',
      ),
    );
    const { code, stderr } = await runLb(['--check', file]);
    expect(code).toBe(78);
    expect(stderr.trimEnd().split('\n')).toEqual([
      expect.stringMatching(located(file, 6, 'listeners.a.groups[0].health.interval')),
    ]);
  });

  it('gives a line number even when the error is about the whole document (no [listeners])', async () => {
    const file = dir.write('no-listeners.toml', toml('[global]', 'log_format = "json"'));
    const { code, stderr } = await runLb(['--check', file]);
    expect(code).toBe(78);
    expect(stderr).toContain('missing required key "listeners"');
    expect(stderr).toMatch(new RegExp(`^${re(file)}:\\d+(:\\d+)?: `));
  });

  it('reports every error in the file, schema and semantic alike, in line order', async () => {
    const file = dir.write(
      'many-errors.toml',
      toml(
        '[defaults]',
        'idle_timeout = "forever"', // 2: bad duration (semantic)
        '',
        '[listeners.a]',
        'listen = 18001',
        'hash_failvoer = true', // 6: unknown key (schema)
        '[[listeners.a.groups]]',
        'backends = []', // 8: empty group (semantic)
        '',
        '[listeners.b]',
        'listen = 18001', // 11: duplicate listen address (semantic)
        '[[listeners.b.groups]]',
        'policy = "hash"',
        'backends = ["127.0.0.1:0", { host = "127.0.0.1", weight = -2, maxc = -1 }]', // 14: three errors
        '[[listeners.b.groups]]',
        'policy = "fastest"', // 16: invalid enum (schema)
        'backends = ["127.0.0.1"]',
      ),
    );
    const { code, stdout, stderr } = await runLb(['--check', file]);
    expect(code).toBe(78);
    expect(stdout).toBe('');
    const expected: [number, string][] = [
      [2, 'defaults.idle_timeout'],
      [6, 'listeners.a.hash_failvoer'],
      [8, 'listeners.a.groups[0].backends'],
      [11, 'listeners.b.listen'],
      [14, 'listeners.b.groups[0].backends[0]'],
      [14, 'listeners.b.groups[0].backends[1].weight'],
      [14, 'listeners.b.groups[0].backends[1].maxc'],
      [16, 'listeners.b.groups[1].policy'],
    ];
    const lines = stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(expected.length);
    expected.forEach(([line, path], i) => expect(lines[i]).toMatch(located(file, line, path)));
  });
});

describe('lb --check: files and usage', () => {
  it('exits 66 for a file that does not exist', async () => {
    const missing = `${dir.path}/no-such-file.toml`;
    const { code, stdout, stderr } = await runLb(['--check', missing]);
    expect(code).toBe(66);
    expect(stdout).toBe('');
    expect(stderr).toMatch(/cannot read config: ENOENT/);
  });

  it('exits 66 for a directory given as the file', async () => {
    const { code, stderr } = await runLb(['--check', dir.path]);
    expect(code).toBe(66);
    expect(stderr).toMatch(/cannot read config: EISDIR/);
  });

  it('exits 64 with one line and a pointer to --help when --check has no file', async () => {
    const { code, stdout, stderr } = await runLb(['--check']);
    expect(code).toBe(64);
    expect(stdout).toBe('');
    expect(stderr).toBe("lb: --check takes exactly one FILE; see 'lb --help' for more\n");
  });

  it('exits 64 when --check is given two files', async () => {
    const a = dir.write('two-a.toml', toml('[listeners.a]', 'listen = 18001', '[[listeners.a.groups]]', 'backends = ["127.0.0.1"]'));
    const { code } = await runLb(['--check', a, a]);
    expect(code).toBe(64);
  });
});

describe('unresolvable host names', () => {
  const source = toml(
    '[listeners.a]',
    'listen = 18001',
    '[[listeners.a.groups]]',
    'backends = ["127.0.0.1:18002", "backend.lb-test.invalid:18003"]',
  );

  it('are a warning for --check: exit 0, the ok line, and the warning with its line and path', async () => {
    const file = dir.write('unresolvable.toml', source);
    const { code, stdout, stderr } = await runLb(['--check', file]);
    expect(code).toBe(0);
    expect(stdout).toBe(`${file}: ok (1 listener, 1 group, 2 backends)\n`);
    const lines = stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(located(file, 4, 'listeners.a.groups[0].backends[1]'));
    expect(lines[0]).toMatch(/warning: cannot resolve host "backend\.lb-test\.invalid"/);
  });

  it('a listen address that does not resolve is an error for lb run: exit 78 before anything starts', async () => {
    // (A backend's name is not: lb starts with that backend down and retries it, test/e2e/unresolved-boot.test.ts.)
    const file = dir.write('unresolvable-run.toml', toml('[listeners.a]', 'listen = "listen.lb-test.invalid:18001"', '[[listeners.a.groups]]', 'backends = ["127.0.0.1:18002"]'));
    const { code, stderr } = await runLb(['run', file]);
    expect(code).toBe(78);
    expect(stderr).toMatch(located(file, 2, 'listeners.a.listen'));
    expect(stderr).not.toMatch(/warning:/);
    expect(stderr).toMatch(/cannot resolve host "listen\.lb-test\.invalid"/);
  });
});

describe('maxconn with a listener Node accepts for', () => {
  it('is a warning for --check naming the listener and why it cannot pause; a listener the addon may accept for gets none', async () => {
    const file = dir.write(
      'maxconn.toml',
      toml(
        '[global]',
        'maxconn = 1000',
        '[listeners.dump]',
        'listen = 18011',
        'packet_dump = "hex"',
        '[[listeners.dump.groups]]',
        'backends = ["127.0.0.1:18012"]',
        '[listeners.plain]',
        'listen = 18013',
        '[[listeners.plain.groups]]',
        'backends = ["127.0.0.1:18012"]',
      ),
    );
    const { code, stderr } = await runLb(['--check', file]);
    expect(code).toBe(0);
    const lines = stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(located(file, 2, 'global.maxconn'));
    expect(lines[0]).toMatch(/warning: listener "dump" is accepted by Node \(packet_dump\), which cannot stop accepting: at maxconn its new clients are closed at once/);
  });
});
