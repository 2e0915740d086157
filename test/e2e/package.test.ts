// The Debian package, built by `npm run package`'s code and unpacked under a temporary root: the
// launcher, the bundled program and the bundled Node runtime work from there; the unit verifies; the
// man page renders.

import { execFile, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDeb } from '../../packaging/build-deb.ts';
import { VERSION } from '../../src/version.ts';

const run = promisify(execFile);
let root = '';
let deb = '';

/** Tools the packaging needs; CI installs them (.ci/run), a developer machine may not have them. */
const tools = ['dpkg-deb', 'go-md2man', 'systemd-analyze', 'groff'];
const missing = tools.filter((t) => !['/usr/bin', '/bin', '/usr/sbin'].some((d) => existsSync(join(d, t))));
const ready = missing.length === 0 || Boolean(process.env.CI); // in CI a missing tool must fail, not skip

describe.runIf(ready)('Debian package', () => {
  beforeAll(async () => {
    deb = await buildDeb();
    root = mkdtempSync(join(tmpdir(), 'lb-deb-'));
    await run('dpkg-deb', ['-x', deb, root]);
  }, 120_000);

  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('declares no dependency on a Debian nodejs and ships its own runtime', async () => {
    const { stdout } = await run('dpkg-deb', ['-f', deb, 'Depends', 'Version']);
    expect(stdout).not.toMatch(/nodejs/);
    expect(stdout).toContain(`Version: ${VERSION}`);
    const { stdout: version } = await run(join(root, 'usr/lib/lb/node'), ['--version']);
    expect(version).toMatch(/^v2[4-9]\./);
  });

  it('runs lb --check on the packaged /etc/lb/lb.toml from the unpacked tree', async () => {
    const { stdout } = await run(join(root, 'usr/bin/lb'), ['--check', join(root, 'etc/lb/lb.toml')]);
    expect(stdout).toMatch(/lb\.toml: ok \(1 listener, 2 groups, 3 backends\)/);
    const { stdout: conffiles } = await run('dpkg-deb', ['-I', deb, 'conffiles']);
    expect(conffiles.trim()).toBe('/etc/lb/lb.toml');
  });

  it('runs lb demo from the unpacked tree and balances', async () => {
    const child = spawn(join(root, 'usr/bin/lb'), ['demo', '--port', '0', '--control-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let err = '';
        const timer = setTimeout(() => reject(new Error(`no start-up line: ${err}`)), 10_000);
        child.stderr.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /demo=127\.0\.0\.1:(\d+)/.exec(err);
          if (m) {
            clearTimeout(timer);
            resolve(Number(m[1]));
          }
        });
        child.once('exit', (code) => reject(new Error(`lb demo exited ${code}: ${err}`)));
      });
      const greetings: string[] = [];
      for (let i = 0; i < 2; i++) {
        greetings.push(
          await new Promise<string>((resolve, reject) => {
            const s = net.connect(port, '127.0.0.1');
            s.setTimeout(5000, () => s.destroy(new Error('timeout')));
            s.once('data', (d) => {
              resolve(d.toString());
              s.end();
            });
            s.once('error', reject);
          }),
        );
      }
      expect(greetings[0]).toMatch(/^hello from backend-\d/);
      expect(greetings[0]).not.toBe(greetings[1]); // round robin over two backends
    } finally {
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
  });

  it('has a systemd unit that systemd-analyze verify accepts without a warning', async () => {
    // verify resolves dependencies (multi-user.target, ...) and ExecStart paths inside --root.
    cpSync('/lib/systemd/system', join(root, 'lib/systemd/system'), { recursive: true, force: false, errorOnExist: false });
    const { stderr } = await run('systemd-analyze', ['verify', '--man=no', `--root=${root}`, '/lib/systemd/system/lb.service']);
    expect(stderr).toBe('');
  });

  it('has a man page that renders without groff warnings', async () => {
    const page = join(root, 'usr/share/man/man1/lb.1.gz');
    const { stdout, stderr } = await run('sh', ['-c', `zcat "${page}" | groff -man -ww -Tutf8 2>&1 >/dev/null; zcat "${page}" | groff -man -Tascii | col -bx`]);
    expect(stderr).toBe('');
    expect(stdout).not.toMatch(/warning/);
    expect(stdout).toMatch(/NAME\s+lb - TCP load balancer/);
    expect(stdout).toContain('lb --check /etc/lb/lb.toml');
  });
});

if (!ready) {
  describe('Debian package', () => {
    // Reason: a developer machine without the packaging tools; .ci/run installs them and CI never skips.
    it.skip(`needs ${missing.join(', ')} (CI installs them)`, () => undefined);
  });
}
