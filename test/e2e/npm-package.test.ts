// The npm package as a user gets it (issue 41): `npm pack` in the checkout (its prepack step compiles
// src/ into lib/), `npm install ./lb-*.tgz` into a fresh project, then `npx lb` with a Node the package's
// `engines` allows — the machine's own where it does, else the checkout's Node 24 first on the PATH.
// Before: the package was private, its bin was src/cli/main.ts (Node strips no types under node_modules,
// so an installed lb could not start) and the tarball would have carried the tests and the bench.

import { execFile, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { within } from '../helpers/backends.ts';
import { ROOT } from '../helpers/lb.ts';

const run = promisify(execFile);
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; engines: { node: string }; files: string[] };

let dir = '';
let project = '';
let packed: { filename: string; size: number; unpackedSize: number; entryCount: number; files: { path: string }[] };
/** PATH for running the installed lb: the chosen Node's directory first. */
let userPath = '';
let nodeUsed = '';

/** "major.minor" of `>=major.minor` (the only form the package uses) against a version string. */
function satisfies(version: string, range: string): boolean {
  const want = /^>=(\d+)\.(\d+)$/.exec(range);
  const have = /^v?(\d+)\.(\d+)/.exec(version);
  if (!want || !have) throw new Error(`cannot compare ${version} with ${range}`);
  return Number(have[1]) > Number(want[1]) || (Number(have[1]) === Number(want[1]) && Number(have[2]) >= Number(want[2]));
}

/** The machine's own `node` (the PATH without the checkout's node_modules/.bin), if there is one. */
function machineNode(): string | null {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '' && !d.includes('node_modules'));
  for (const d of dirs) if (existsSync(join(d, 'node'))) return join(d, 'node');
  return null;
}

function npx(args: readonly string[], ms = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return run('npx', ['--no-install', 'lb', ...args], { cwd: project, env: { ...process.env, PATH: userPath }, timeout: ms }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout, stderr: e.stderr }),
  );
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'lb-npm-'));
  const out = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: ROOT, timeout: 120_000, maxBuffer: 16 << 20 });
  packed = (JSON.parse(out.stdout) as (typeof packed)[])[0]!;
  project = join(dir, 'project');
  await run('mkdir', [project]);
  // The addon's build is the package's install step; allowed explicitly (npm 11 warns about unlisted ones).
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'lb-user', version: '1.0.0', private: true, allowScripts: { lb: true } }));
  // --prefer-offline: the dependencies come from npm's cache where `npm ci` put them (the registry otherwise).
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(dir, packed.filename)], { cwd: project, timeout: 180_000 });
  const own = machineNode();
  const ownVersion = own ? spawnSync(own, ['--version'], { encoding: 'utf8' }).stdout.trim() : '';
  nodeUsed = own && satisfies(ownVersion, pkg.engines.node) ? own : process.execPath;
  userPath = [dirname(nodeUsed), ...(process.env.PATH ?? '').split(delimiter).filter((d) => !d.includes('node_modules'))].join(delimiter);
}, 240_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('npm pack, then npm install ./lb-*.tgz', () => {
  it('the tarball holds what runs (compiled lib/, schema, examples, addon source, README, LICENSE) and no test, bench or TypeScript', () => {
    const files = packed.files.map((f) => f.path).sort();
    console.log(`${packed.filename}: ${packed.size} bytes packed, ${packed.unpackedSize} unpacked, ${packed.entryCount} files; lb run by ${nodeUsed}`);
    for (const f of ['lib/cli/main.js', 'lib/worker/main.js', 'lib/config/parse-worker.js', 'schemas/lb.schema.json', 'examples/lb.toml', 'native/lb_splice.c', 'native/build.mjs', 'README.md', 'LICENSE', 'package.json']) {
      expect(files).toContain(f);
    }
    expect(files.filter((f) => /^(test|bench|src|packaging|docs|dist|build)\//.test(f) || f.endsWith('.ts'))).toEqual([]);
    expect(packed.entryCount).toBeLessThan(150);
  });

  it('npx lb --version and --check on the packaged examples, with a Node its engines allow', async () => {
    const v = await npx(['--version']);
    expect(v).toMatchObject({ code: 0, stdout: `lb ${pkg.version}\n` });
    for (const example of ['lb.toml', 'distcc.toml', 'imap-failover.toml', 'sticky-hash.toml']) {
      const r = await npx(['--check', join('node_modules', 'lb', 'examples', example)]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/: ok \(/);
    }
    const bad = await npx(['--check', join('node_modules', 'lb', 'package.json')]);
    expect(bad.code).toBe(78);
  });

  it('npx lb demo relays a connection and npx lb ctl reaches its control port; the addon was built at install', async () => {
    // The addon is built where the checkout's is (same machine, same compiler); its absence would mean the JS relay.
    if (existsSync(join(ROOT, 'build', 'lb_splice.node'))) expect(existsSync(join(project, 'node_modules', 'lb', 'build', 'lb_splice.node'))).toBe(true);
    const demo = spawn('npx', ['--no-install', 'lb', 'demo', '--port', '0', '--control-port', '0'], { cwd: project, env: { ...process.env, PATH: userPath }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    demo.stderr.on('data', (d: Buffer) => (err += d.toString()));
    let pid = 0;
    try {
      const line = await within(
        new Promise<string>((resolve, reject) => {
          demo.stderr.on('data', () => {
            const m = /^lb \S+ listening on .*$/m.exec(err);
            if (m) resolve(m[0]);
          });
          demo.once('exit', (code) => reject(new Error(`lb demo exited (${code}):\n${err}`)));
        }),
        20_000,
        'lb demo to start',
      );
      pid = Number(/\(pid (\d+)\)/.exec(line)![1]);
      const port = Number(/demo=127\.0\.0\.1:(\d+)/.exec(line)![1]);
      const control = Number(/control 127\.0\.0\.1:(\d+)/.exec(line)![1]);
      const greeting = await within(
        new Promise<string>((resolve, reject) => {
          const c = net.connect(port, '127.0.0.1');
          let got = '';
          c.on('data', (d: Buffer) => {
            got += d.toString();
            if (got.includes('\n')) {
              c.destroy();
              resolve(got);
            }
          });
          c.on('error', reject);
        }),
        5000,
        'a greeting through the demo',
      );
      expect(greeting).toMatch(/^hello from backend-\d/);
      const info = await npx(['ctl', '--control', `127.0.0.1:${control}`, 'show', 'info']);
      expect(info.code, info.stderr).toBe(0);
      expect(info.stdout).toMatch(new RegExp(`^Version: ${pkg.version.replace(/\./g, '\\.')}$`, 'm'));
      expect(info.stdout).toMatch(/^Path\.demo: /m);
    } finally {
      if (pid > 0) process.kill(pid, 'SIGTERM');
      demo.kill('SIGTERM');
      await within(new Promise((r) => (demo.exitCode !== null ? r(null) : demo.once('exit', r))), 10_000, 'npx lb demo to exit');
    }
  });
});
