// balance's command line (`lb [-b addr] [-B addr] [-t sec] [-T sec] [-adfpH6] PORT CHANNEL... [!|%] CHANNEL...`)
// compiled through the same pipeline as a TOML file, and `lb --print-toml` as a migration aid.

import { afterAll, describe, expect, it, vi } from 'vitest';
import { parseBalanceArgs } from '../../src/cli/balance-args.ts';
import { balanceSocketPath } from '../../src/control/client.ts';
import { parseToml } from '../../src/config/load.ts';
import { buildTable } from '../../src/config/pipeline.ts';
import type { ListenerEntry, RoutingTable } from '../../src/config/table.ts';
import { docToToml, tableToDoc } from '../../src/config/to-toml.ts';
import { runLb, scratchDir } from '../helpers/cli.ts';

// The error cases call `main` on the path that starts a balancer: if one were wrongly accepted the test
// must fail, not bind port 8888.
vi.mock('../../src/runtime.ts', async () => (await import('../helpers/cli.ts')).runtimeThatMustNotStart());

const dir = scratchDir();
// Starting from balance's command line makes the directory for the instance's control socket: keep it in
// the scratch directory.
vi.stubEnv('XDG_RUNTIME_DIR', dir.path);
afterAll(() => {
  vi.unstubAllEnvs();
  dir.remove();
});

async function compileArgs(argv: string[]): Promise<RoutingTable> {
  const result = await buildTable(parseBalanceArgs(argv).doc, { resolve: 'skip' });
  if (!result.ok) throw new Error(`${argv.join(' ')}: ${result.diagnostics.map((d) => d.message).join('; ')}`);
  return result.table;
}

type B = { host: string; port: number; maxc: number };
const b = (host: string, port: number, maxc = 0): B => ({ host, port, maxc });
const rr = (...backends: B[]) => ({ policy: 'rr', backends });
const hash = (...backends: B[]) => ({ policy: 'hash', backends });

/** The fields balance's command line controls; everything else must stay at its default. */
const plain = {
  source: null,
  connectTimeoutMs: 5000,
  idleTimeoutMs: 0,
  hashFailover: false,
  autodisable: false,
  packetDump: 'off',
} satisfies Partial<ListenerEntry>;

interface ArgvCase {
  what: string;
  argv: string[];
  listener: Record<string, unknown>;
}

const cases: ArgvCase[] = [
  {
    what: 'man page: two servers, then a failover group (! ends a round-robin group)',
    argv: ['8888', 'host1', 'host2', '!', 'backup'],
    listener: {
      ...plain,
      name: '8888',
      listen: { host: null, port: 8888 },
      groups: [rr(b('host1', 8888), b('host2', 8888)), rr(b('backup', 8888))],
    },
  },
  {
    what: 'man page: imap by service name, host::maxc keeps the listen port',
    argv: ['imap', 'mail1::16', 'mail2::16', '!', 'backup'],
    listener: {
      ...plain,
      name: 'imap',
      listen: { host: null, port: 143 },
      groups: [rr(b('mail1', 143, 16), b('mail2', 143, 16)), rr(b('backup', 143))],
    },
  },
  {
    what: 'man page: smtp with per-channel ports given as numbers and service names',
    argv: ['smtp', 'mailhost1:smtp', 'mailhost2:25', 'mailhost3'],
    listener: {
      ...plain,
      name: 'smtp',
      listen: { host: null, port: 25 },
      groups: [rr(b('mailhost1', 25), b('mailhost2', 25), b('mailhost3', 25))],
    },
  },
  {
    what: 'man page: % ends a hash group, the last group is round robin',
    argv: ['8888', 'host1', 'host2', '%', 'host3', 'host4'],
    listener: { ...plain, groups: [hash(b('host1', 8888), b('host2', 8888)), rr(b('host3', 8888), b('host4', 8888))] },
  },
  {
    what: 'mixed separators: hash group, round-robin group, last group',
    argv: ['8888', 'h1:81:2', '%', 'h2', 'h3', '!', 'h4:84'],
    listener: { ...plain, groups: [hash(b('h1', 81, 2)), rr(b('h2', 8888), b('h3', 8888)), rr(b('h4', 84))] },
  },
  {
    what: 'a trailing % makes the only group a hash group (no empty group is left behind)',
    argv: ['8888', 'h1', 'h2', '%'],
    listener: { ...plain, groups: [hash(b('h1', 8888), b('h2', 8888))] },
  },
  {
    what: 'a trailing ! is accepted',
    argv: ['8888', 'h1', '!'],
    listener: { ...plain, groups: [rr(b('h1', 8888))] },
  },
  {
    what: 'man page: -b with an IPv6 address',
    argv: ['-b', '::1', '8888', '127.0.0.1:80', '127.0.0.2:80'],
    listener: { ...plain, listen: { host: '::1', port: 8888 }, groups: [rr(b('127.0.0.1', 80), b('127.0.0.2', 80))] },
  },
  {
    what: '-b with an IPv4 address',
    argv: ['-b', '127.0.0.1', '8888', 'h1'],
    listener: { ...plain, listen: { host: '127.0.0.1', port: 8888 } },
  },
  {
    what: 'IPv6 channels in brackets, with port and maxc',
    argv: ['8888', '[::1]:143:16', '[2001:db8::7]::4'],
    listener: { ...plain, groups: [rr(b('::1', 143, 16), b('2001:db8::7', 8888, 4))] },
  },
  {
    what: '-t and -T are seconds (connect and idle timeout)',
    argv: ['-t', '3', '-T', '600', '8888', 'h1'],
    listener: { ...plain, connectTimeoutMs: 3000, idleTimeoutMs: 600_000 },
  },
  {
    what: '-H turns on hash failover',
    argv: ['-H', '8888', 'h1', 'h2', '%', 'h3'],
    listener: { ...plain, hashFailover: true },
  },
  {
    what: '-a turns on autodisable',
    argv: ['-a', '8888', 'h1'],
    listener: { ...plain, autodisable: true },
  },
  {
    what: "-p dumps packets in balance's format",
    argv: ['-p', '8888', 'h1'],
    listener: { ...plain, packetDump: 'balance' },
  },
  {
    what: '-B sets the source address',
    argv: ['-B', '10.0.0.5', '8888', 'h1'],
    listener: { ...plain, source: '10.0.0.5' },
  },
  {
    what: '-d -f -6 -M are accepted and change nothing in the table',
    argv: ['-d', '-f', '-6', '-M', '8888', 'h1'],
    listener: { ...plain, listen: { host: null, port: 8888 }, groups: [rr(b('h1', 8888))] },
  },
  {
    what: 'bundled flags and all options together',
    argv: ['-aHp', '-t', '2', '-T', '30', '-B', '127.0.0.1', '-b', '127.0.0.1', '7000', '127.0.0.1:7001', '%', '127.0.0.1:7002'],
    listener: {
      name: '7000',
      listen: { host: '127.0.0.1', port: 7000 },
      source: '127.0.0.1',
      connectTimeoutMs: 2000,
      idleTimeoutMs: 30_000,
      hashFailover: true,
      autodisable: true,
      packetDump: 'balance',
      groups: [hash(b('127.0.0.1', 7001)), rr(b('127.0.0.1', 7002))],
    },
  },
];

describe("balance's command line compiles to the routing table", () => {
  it.each(cases)('$what', async ({ argv, listener }) => {
    const table = await compileArgs(argv);
    expect(table.listeners).toHaveLength(1);
    expect(table.listeners[0]).toMatchObject(listener);
  });

  it('keeps the global defaults and has no control port', async () => {
    const table = await compileArgs(['8888', 'h1']);
    expect(table.control).toBeNull();
    expect(table.defaults).toEqual({ connectTimeoutMs: 5000, idleTimeoutMs: 0 });
    expect(table.global.drainTimeoutMs).toBe(30_000);
  });

  it("has no 16-group or 64-channel limit (balance's MAXGROUPS / MAXCHANNELS)", async () => {
    const many = Array.from({ length: 40 }, (_, g) => [`10.0.${g}.1`, `10.0.${g}.2`, '!']).flat();
    const wide = Array.from({ length: 200 }, (_, i) => `10.1.${i >> 8}.${i & 255}:9000`);
    const table = await compileArgs(['8888', ...many, ...wide]);
    const groups = table.listeners[0]!.groups;
    expect(groups).toHaveLength(41);
    expect(groups[39]!.backends.map((x) => x.host)).toEqual(['10.0.39.1', '10.0.39.2']);
    expect(groups[40]!.backends).toHaveLength(200);
  });

  it('maps a backend path of the compiled config back to the channel operand as typed', () => {
    const cmd = parseBalanceArgs(['8888', 'h1', 'h2::4', '!', 'backup:9000']);
    expect(cmd.operandAt(['listeners', '8888', 'groups', 0, 'backends', 1])).toBe('h2::4');
    expect(cmd.operandAt(['listeners', '8888', 'groups', 1, 'backends', 0])).toBe('backup:9000');
    expect(cmd.operandAt(['listeners', '8888', 'listen'])).toBeNull();
  });

  it('reports -d as debug', () => {
    expect(parseBalanceArgs(['-d', '8888', 'h1']).debug).toBe(true);
    expect(parseBalanceArgs(['8888', 'h1']).debug).toBe(false);
  });
});

describe("balance's command line errors exit 64", () => {
  it.each<[string, string[], RegExp]>([
    ['a leading !', ['8888', '!', 'h1'], /"!" with no channel before it/],
    ['a leading %', ['8888', '%', 'h1'], /"%" with no channel before it/],
    ['! !', ['8888', 'h1', '!', '!', 'h2'], /"!" with no channel before it: no channels in group 1/],
    ['% %', ['8888', 'h1', '%', '%', 'h2'], /"%" with no channel before it/],
    ['no channels', ['8888'], /no channels given/],
    ['no port at all', ['-b', '127.0.0.1'], /missing PORT/],
    ['a listen port out of range', ['99999', 'h1'], /port 99999 out of range/],
    ['an unknown listen service name', ['no-such-service-xyz', 'h1'], /unknown service name "no-such-service-xyz"/],
    ['a listen port that is not a port', ['80.5', 'h1'], /invalid port "80\.5"/],
    ['a backend port of 0', ['8888', 'h1:0'], /port 0 out of range \(1-65535\) in "h1:0"/],
    ['a backend port out of range', ['8888', 'h1:65536'], /port 65536 out of range \(1-65535\) in "h1:65536"/],
    ['a backend service name that does not exist', ['8888', 'h1:no-such-service-xyz'], /unknown service name/],
    ['a maxc that is not a number', ['8888', 'h1::x'], /invalid maxc "x" in "h1::x"/],
    ['a negative maxc', ['8888', 'h1:80:-1'], /invalid maxc "-1"/],
    ['an unbracketed IPv6 channel', ['8888', '::1'], /must be written in brackets/],
    ['-t 0', ['-t', '0', '8888', 'h1'], /-t takes whole seconds >= 1, not "0"/],
    ['-T 0', ['-T', '0', '8888', 'h1'], /-T takes whole seconds >= 1, not "0"/],
    ['-t with a fraction', ['-t', '1.5', '8888', 'h1'], /-t takes whole seconds >= 1/],
    ['-t with no value', ['8888', 'h1', '-t'], /^lb: option -t needs a value;/],
    ['-b with no value', ['-b'], /^lb: option -b needs a value;/],
    ['an unknown option', ['-x', '8888', 'h1'], /^lb: unknown option -x \(balance's options: -b -B -t -T -a -d -f -p -H -M -6 -c -i\);/],
    ['an unknown long option', ['--frobnicate', '8888', 'h1'], /^lb: unknown option --frobnicate /],
    ['a value given to a flag', ['--print-toml', '-a=1', '8888', 'h1'], /^lb: /],
  ])('%s: one line, with a pointer to --help', async (_what, argv, message) => {
    const { code, stdout, stderr } = await runLb(argv);
    expect(code).toBe(64);
    expect(stdout).toBe('');
    expect(stderr).toMatch(message);
    // One line, ours: not Node's option-parser text (`'--b <value>'`, "place it after '--'"), not the usage.
    expect(stderr.split('\n')).toEqual([expect.stringMatching(/^lb: .*; see 'lb --help' for more$/), '']);
    expect(stderr).not.toMatch(/<value>|positional argument|usage:/);
  });

  it.each<[string, string[], RegExp]>([
    ['lb with nothing', [], /^lb: nothing to do;/],
    ['run with an unknown option', ['run', '--frobnicate', 'x.toml'], /^lb: unknown option --frobnicate;/],
    ['--check with an unknown option', ['--check', '--jsno', 'x.toml'], /^lb: unknown option --jsno;/],
    ['ctl with a missing value', ['ctl', '--control'], /^lb: option --control needs a value;/],
    ['demo with a stray argument', ['demo', 'now'], /^lb: unexpected argument "now";/],
  ])("lb's own commands: %s is one line too", async (_what, argv, message) => {
    const { code, stdout, stderr } = await runLb(argv);
    expect(code).toBe(64);
    expect(stdout).toBe('');
    expect(stderr).toMatch(message);
    expect(stderr.split('\n')).toEqual([expect.stringMatching(/; see 'lb --help' for more$/), '']);
  });

  it('--print-toml with bad arguments exits 64 and prints no TOML', async () => {
    const { code, stdout, stderr } = await runLb(['--print-toml', '8888', '!', 'h1']);
    expect(code).toBe(64);
    expect(stdout).toBe('');
    expect(stderr).toMatch(/no channel before it/);
  });
});

describe('lb --print-toml', () => {
  async function checkJson(file: string): Promise<unknown> {
    const { code, stdout, stderr } = await runLb(['--check', '--json', file]);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    return JSON.parse(stdout);
  }

  it.each<[string, string[]]>([
    ['groups of both kinds', ['8888', '127.0.0.1:81:2', '127.0.0.1:82', '%', '127.0.0.1::4', '!', '[::1]:83']],
    ['every option', ['-aHp', '-d', '-f', '-t', '3', '-T', '90', '-B', '127.0.0.1', '-b', '::1', 'smtp', '127.0.0.1:2525:8', '%', '127.0.0.2']],
  ])('output for %s passes --check and compiles to the same table', async (what, argv) => {
    const printed = await runLb(['--print-toml', ...argv]);
    expect(printed.code).toBe(0);
    expect(printed.stderr).toBe('');
    expect(printed.stdout).toMatch(/^# Generated by lb --print-toml from: lb /);
    const file = dir.write(`print-toml-${what.replace(/\W+/g, '-')}.toml`, printed.stdout);
    const checked = await runLb(['--check', file]);
    expect(checked).toEqual({ code: 0, stdout: expect.stringMatching(/: ok \(1 listener, \d+ groups?, \d+ backends?\)\n$/), stderr: '' });
    const { control, ...rest } = (await checkJson(file)) as Record<string, unknown>;
    const { control: none, ...expected } = JSON.parse(JSON.stringify(await compileArgs(argv))) as Record<string, unknown>;
    expect(none).toBeNull();
    expect(rest).toEqual(expected);
    // The control socket the same command line would serve: `lb -c`, `lb -i` and `lb ctl --config` reach it.
    const cmd = parseBalanceArgs(argv);
    expect(control).toMatchObject({ listen: null, socket: balanceSocketPath(cmd.port, cmd.bind) });
  });

  it('writes disabled and weighted backends in a form that reads back to the same table', async () => {
    const source = [
      '[listeners.web]',
      'listen = "127.0.0.1:18080"',
      '[[listeners.web.groups]]',
      'policy = "weighted"',
      'backends = [',
      '  { host = "127.0.0.1", port = 18081, weight = 3 },',
      '  { host = "127.0.0.1", port = 18082, weight = 0, maxc = 5 },',
      '  { host = "::1", port = 18083, enabled = false },',
      '  "127.0.0.1:18084:2",',
      ']',
      '',
    ].join('\n');
    const loaded = parseToml(source);
    if (!loaded.ok) throw new Error('test config does not parse');
    const built = await buildTable(loaded.doc, { resolve: 'skip' });
    if (!built.ok) throw new Error(built.diagnostics.map((d) => d.message).join('; '));
    const backends = built.table.listeners[0]!.groups[0]!.backends;
    expect(backends.map((x) => [x.weight, x.enabled, x.maxc])).toEqual([[3, true, 0], [0, true, 5], [1, false, 0], [1, true, 2]]);

    const file = dir.write('weighted-disabled.toml', docToToml(tableToDoc(built.table)));
    expect(await checkJson(file)).toEqual(JSON.parse(JSON.stringify(built.table)));
  });
});

describe('source address family', () => {
  it('rejects an IPv4 -B source with an IPv6 backend, naming the operand', async () => {
    const { code, stderr } = await runLb(['--print-toml', '-B', '127.0.0.1', '8888', '[::1]:80']);
    expect(code).toBe(64);
    expect(stderr).toMatch(/"\[::1\]:80": backend ::1 is IPv6 but the listener's source address 127\.0\.0\.1 is IPv4/);
  });
});
