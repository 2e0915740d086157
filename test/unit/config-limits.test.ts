// Bounds on a config file (issue 11, item 7): nesting deeper than MAX_CONFIG_DEPTH (64) and files larger
// than MAX_CONFIG_BYTES (4 MiB) are refused with a diagnostic naming file, line and key path (exit 78),
// in time linear in the size of the file. Before: a 5,000-level dotted key made `lb --check` exit 1 with
// "RangeError: Maximum call stack size exceeded" (findForbiddenKeys recursed), and 3,000 levels took
// seconds (every key path copied at every level, every prefix formatted as a string).

import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_REPORTED_PROBLEMS } from '../../src/config/limits.ts';
import { Locator } from '../../src/config/locate.ts';
import { loadConfigSource } from '../../src/config/pipeline.ts';
import { re, runLb, scratchDir } from '../helpers/cli.ts';
import { ROOT } from '../helpers/lb.ts';

vi.mock('../../src/runtime.ts', async () => (await import('../helpers/cli.ts')).runtimeThatMustNotStart());

const dir = scratchDir();
afterAll(() => dir.remove());

const chain = (n: number, seg = 'k'): string => Array.from({ length: n }, () => seg).join('.');
/** The path printed for a too-deep key: the first MAX_CONFIG_DEPTH + 1 segments. */
const deepPath = (seg = 'k'): string => chain(MAX_CONFIG_DEPTH + 1, seg);

const VALID = '[listeners.web]\nlisten = "127.0.0.1:0"\n[[listeners.web.groups]]\nbackends = ["127.0.0.1:1"]\n';

async function refusal(source: string) {
  const t0 = performance.now();
  const r = await loadConfigSource(source, { resolve: 'skip' });
  const ms = performance.now() - t0;
  if (r.ok) throw new Error('accepted');
  return { ...r, ms, first: r.diagnostics[0]! };
}

describe('nesting deeper than 64 levels is refused with its line and key path', () => {
  const cases: { what: string; source: string; line: number; path: string }[] = [
    { what: 'a 5,000-level dotted key', source: `${chain(5000)} = 1\n`, line: 1, path: deepPath() },
    { what: 'a 5,000-level table header', source: `# c\n\n[${chain(5000)}]\nx = 1\n`, line: 3, path: deepPath() },
    { what: 'a 5,000-level [[array of tables]] header', source: `[[${chain(5000)}]]\n`, line: 1, path: deepPath() },
    {
      what: 'a header and a dotted key under it that together pass the limit',
      source: `${VALID}[${chain(40, 'h')}]\nok = 1\n${chain(30)} = 1\n`,
      line: 7,
      path: `${chain(40, 'h')}.${chain(MAX_CONFIG_DEPTH + 1 - 40)}`,
    },
    {
      what: 'arrays nested 5,000 deep',
      source: `x = 1\na = ${'['.repeat(5000)}${']'.repeat(5000)}\n`,
      line: 2,
      path: `a${'[0]'.repeat(MAX_CONFIG_DEPTH)}`,
    },
    {
      what: 'inline tables nested 5,000 deep',
      source: `a = ${'{ b = '.repeat(5000)}1${' }'.repeat(5000)}\n`,
      line: 1,
      path: `a.${chain(MAX_CONFIG_DEPTH, 'b')}`,
    },
    {
      what: 'an unclosed 100,000-deep array (not valid TOML either)',
      source: `a = ${'['.repeat(100_000)}\n`,
      line: 1,
      path: `a${'[0]'.repeat(MAX_CONFIG_DEPTH)}`,
    },
  ];
  it.each(cases)('$what', async ({ source, line, path: keyPath }) => {
    const r = await refusal(source);
    expect(r.exitCode).toBe(78);
    expect(r.diagnostics).toHaveLength(1);
    expect(r.first).toMatchObject({ code: 'LB_CONFIG_TOO_DEEP', line });
    const file = dir.write('deep.toml', source);
    const out = await runLb(['--check', file]);
    expect(out.code).toBe(78);
    expect(out.stderr).toMatch(new RegExp(`^${re(file)}:${line}:\\d+: ${re(keyPath)}: nested more than 64 levels deep .*\\[LB_CONFIG_TOO_DEEP\\]$`, 'm'));
  });

  it('64 levels are allowed (the document is then checked as usual)', async () => {
    const r = await refusal(`${chain(MAX_CONFIG_DEPTH)} = 1\n`);
    expect(r.diagnostics.map((d) => d.code)).not.toContain('LB_CONFIG_TOO_DEEP');
    expect(r.diagnostics.map((d) => d.code)).toContain('LB_CONFIG_UNKNOWN_KEY'); // k is not a key of lb's config
  });

  it('is linear: 3,000, 20,000 and 100,000 levels each take well under a second', async () => {
    for (const n of [3000, 20_000, 100_000]) {
      for (const source of [`${chain(n)} = 1\n`, `[${chain(n)}]\n`]) {
        const r = await refusal(source);
        expect(r.first.code).toBe('LB_CONFIG_TOO_DEEP');
        expect(r.ms).toBeLessThan(1000);
      }
    }
  });

  it('the real `lb --check` process exits 78 on the issue\'s 5,000-level key (it exited 1 with a RangeError)', () => {
    const file = dir.write('issue.toml', `${chain(5000)} = 1\n`);
    const r = spawnSync(process.execPath, [path.join(ROOT, 'src/cli/main.ts'), '--check', file], { encoding: 'utf8', timeout: 15_000 });
    expect(r.status).toBe(78);
    expect(r.stderr).not.toMatch(/RangeError/);
    expect(r.stderr).toMatch(new RegExp(`^${re(file)}:1:1: ${re(deepPath())}: .*\\[LB_CONFIG_TOO_DEEP\\]$`, 'm'));
  });
});

describe('files over 4 MiB are refused', () => {
  it('a 50 MB string value: refused from its size before it is read, exit 78', async () => {
    const file = path.join(dir.path, 'big.toml');
    // Written by dd, not by this process: the test must not need 50 MB of heap either.
    execFileSync('sh', ['-c', `{ printf 'a = "'; head -c 50000000 /dev/zero | tr '\\0' x; printf '"\\n'; } > ${file}`]);
    const before = process.memoryUsage().rss;
    const t0 = performance.now();
    const out = await runLb(['--check', file]);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(process.memoryUsage().rss - before).toBeLessThan(20 * 1024 * 1024);
    expect(out.code).toBe(78);
    expect(out.stderr).toMatch(new RegExp(`^${re(file)}: config file is 50000007 bytes, over the limit of ${MAX_CONFIG_BYTES} bytes \\(4 MiB\\) \\[LB_CONFIG_TOO_LARGE\\]$`, 'm'));
  });

  it('exactly 4 MiB is read; one byte more is refused', async () => {
    const head = VALID + '# ';
    const exact = head + 'x'.repeat(MAX_CONFIG_BYTES - head.length - 1) + '\n';
    expect(Buffer.byteLength(exact)).toBe(MAX_CONFIG_BYTES);
    expect((await runLb(['--check', dir.write('exact.toml', exact)])).code).toBe(0);
    const over = await runLb(['--check', dir.write('over.toml', exact + '\n')]);
    expect(over.code).toBe(78);
    expect(over.stderr).toMatch(/LB_CONFIG_TOO_LARGE/);
  });
});

describe('a FIFO in place of the file', () => {
  it('is refused at once (exit 66), not read until a writer appears', async () => {
    const fifo = path.join(dir.path, 'fifo.toml');
    execFileSync('mkfifo', [fifo]);
    const t0 = performance.now();
    const out = await runLb(['--check', fifo]);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(out.code).toBe(66);
    expect(out.stderr).toMatch(new RegExp(`^${re(fifo)}: cannot read config: it is a FIFO .*\\[LB_CONFIG_NOT_FILE\\]$`, 'm'));
  });
});

describe('many problems', () => {
  it('20,000 unknown keys: the first 100 are reported and the rest counted, in well under a second', async () => {
    const source = Array.from({ length: 20_000 }, (_, i) => `zz${i} = ${i}`).join('\n') + '\n' + VALID;
    const r = await refusal(source);
    expect(r.ms).toBeLessThan(1000);
    expect(r.diagnostics).toHaveLength(MAX_REPORTED_PROBLEMS + 1);
    expect(r.diagnostics.at(-1)!.message).toBe(`${20_000 - MAX_REPORTED_PROBLEMS} more problems not shown`);
    expect(r.diagnostics.at(-1)!.line).toBeUndefined();
  });

  it('a key megabytes long gets no "did you mean" (the edit distance was length × key length)', async () => {
    const r = await refusal(`${VALID}${'y'.repeat(1_000_000)} = 1\n`);
    expect(r.ms).toBeLessThan(1000);
    expect(r.first.code).toBe('LB_CONFIG_UNKNOWN_KEY');
    expect(r.first.message).not.toMatch(/did you mean/);
  });
});

describe('the locator', () => {
  it('places keys after deep but allowed nesting, and a numbered key given as a number by ajv', () => {
    const loc = new Locator(`[a.b]\n"0" = 1\n[[c]]\n[[c]]\nd = [1,\n  { e = 2 }]\n`);
    expect(loc.tooDeep).toBeNull();
    expect(loc.find(['a', 'b', 0])).toEqual({ line: 2, col: 1 });
    expect(loc.find(['c', 1, 'd', 1, 'e'])).toEqual({ line: 6, col: 5 });
    expect(loc.find(['c', 1, 'nope'])).toEqual({ line: 4, col: 1 });
  });

  it('places the scalar elements of an array (kept packed, not as a node each)', () => {
    const loc = new Locator('x = [1,\n  "two", [3, 4],\n  5]\n');
    expect(loc.find(['x', 0])).toEqual({ line: 1, col: 6 });
    expect(loc.find(['x', 1])).toEqual({ line: 2, col: 3 });
    expect(loc.find(['x', 2, 1])).toEqual({ line: 2, col: 14 });
    expect(loc.find(['x', 3])).toEqual({ line: 3, col: 3 });
    expect(loc.find(['x', 4])).toEqual({ line: 1, col: 1 });
  });

  it("does not take a backslash in a '''literal''' string for an escape", () => {
    const loc = new Locator(`a = '''x\\'''\nb = 1\n`);
    expect(loc.find(['b'])).toEqual({ line: 2, col: 1 });
  });
});
