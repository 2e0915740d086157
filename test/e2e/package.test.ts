// The Debian package, built by `npm run package`'s code and unpacked under a temporary root: the
// launcher, the bundles and the bundled Node runtime work from there; lintian finds no error and no
// warning that packaging/lb.lintian-overrides does not explain; the unit verifies; the man page renders;
// the maintainer scripts start lb only with a real config and purge its state.

import { execFile, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDeb, missingTools, PACKAGING_TOOLS, type BuildResult } from '../../packaging/build-deb.ts';
import { BUNDLE_ENTRIES } from '../../src/entries.ts';
import { VERSION } from '../../src/version.ts';
import { ROOT } from '../helpers/lb.ts';

const run = promisify(execFile);
let root = '';
let built: BuildResult;

/** What the build needs, plus what this test checks the package with; .ci/run installs them all. */
const tools = { ...PACKAGING_TOOLS, lintian: 'lintian', 'systemd-analyze': 'systemd', groff: 'groff-base', col: 'bsdextrautils' };
const missing = missingTools(tools);
// In CI a missing tool fails the build (buildDeb names it); on a developer machine the suite is skipped,
// and says so in the output rather than only in the skip count.
const ready = missing.length === 0 || Boolean(process.env.CI);
if (!ready) console.warn(`test/e2e/package.test.ts skipped: needs ${missing.join(', ')} (apt-get install ${[...new Set(missing.map((t) => tools[t as keyof typeof tools]))].join(' ')})`);

describe('npm run package without its tools', () => {
  it('prints one line naming the Debian packages to install, exit 69, no stack trace', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'lb-nopath-'));
    try {
      const r = await run(process.execPath, ['packaging/build-deb.ts'], { cwd: ROOT, env: { PATH: empty } }).then(
        () => ({ code: 0, stdout: '', stderr: '' }),
        (e: { code: number; stdout: string; stderr: string }) => e,
      );
      expect(r.code).toBe(69);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe('npm run package: needs dpkg-deb, strip, go-md2man: apt-get install dpkg binutils go-md2man\n');
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});

describe.runIf(ready)('Debian package', () => {
  beforeAll(async () => {
    built = await buildDeb();
    root = mkdtempSync(join(tmpdir(), 'lb-deb-'));
    await run('dpkg-deb', ['-x', built.deb, root]);
  }, 180_000);

  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it('declares no dependency on a Debian nodejs and ships its own runtime, stripped', async () => {
    const { stdout } = await run('dpkg-deb', ['-f', built.deb, 'Depends', 'Version', 'Maintainer']);
    expect(stdout).not.toMatch(/nodejs/);
    expect(stdout).toContain(`Version: ${VERSION}`);
    expect(stdout).not.toMatch(/localhost/);
    const { stdout: version } = await run(join(root, 'usr/lib/lb/node'), ['--version']);
    expect(version).toMatch(/^v2[4-9]\./);
    const { stdout: sections } = await run('readelf', ['-S', '-W', join(root, 'usr/lib/lb/node')]);
    expect(sections).not.toMatch(/\.symtab|\.debug_/);
  });

  it('bundles every worker entry whose source exists, and the splice addon when it was built', () => {
    const lib = join(root, 'usr/lib/lb');
    for (const [name, source] of Object.entries(BUNDLE_ENTRIES)) {
      const present = existsSync(join(ROOT, 'src', source));
      expect(existsSync(join(lib, `${name}.js`)), `${name}.js`).toBe(present);
      expect(built.notes).toContain(present ? `bundled ${name}.js from src/${source.slice(2)}` : `skipped ${name}.js: src/${source.slice(2)} does not exist yet`);
    }
    const addon = existsSync(join(ROOT, 'build/lb_splice.node'));
    expect(existsSync(join(lib, 'lb_splice.node'))).toBe(addon);
    expect(built.notes.some((n) => n.startsWith(addon ? 'included lb_splice.node' : 'left out lb_splice.node'))).toBe(true);
    // The bundles are ES modules named .js: their type is declared beside them, not guessed by Node.
    expect(JSON.parse(readFileSync(join(lib, 'package.json'), 'utf8'))).toEqual({ type: 'module' });
  });

  it('has no lintian error and no warning that is not overridden with a reason in packaging/', async () => {
    const { stdout, stderr } = await run('lintian', ['--tag-display-limit', '0', '--display-info', built.deb], { maxBuffer: 1 << 22 }).catch(
      (e: { stdout: string; stderr: string }) => e,
    );
    const tags = stdout.split('\n').filter((l) => /^[EW]: /.test(l));
    expect(tags, stdout + stderr).toEqual([]);
    // Every override in use still matches a tag (lintian reports unused ones as I: unused-override).
    expect(stdout).not.toMatch(/unused-override|mismatched-override/);
  }, 180_000);

  it('runs lb --check on the packaged /etc/lb/lb.toml from the unpacked tree', async () => {
    const { stdout } = await run(join(root, 'usr/bin/lb'), ['--check', join(root, 'etc/lb/lb.toml')]);
    expect(stdout).toMatch(/lb\.toml: ok \(1 listener, 2 groups, 3 backends\)/);
    const { stdout: conffiles } = await run('dpkg-deb', ['-I', built.deb, 'conffiles']);
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
    const unit = readFileSync(join(root, 'lib/systemd/system/lb.service'), 'utf8');
    expect(unit).toMatch(/^Type=notify$/m); // a failed bind fails `systemctl start` (test/e2e/readiness.test.ts)
    expect(unit).toMatch(/^NotifyAccess=all$/m);
  });

  it('has a man page that renders without groff warnings', async () => {
    const page = join(root, 'usr/share/man/man1/lb.1.gz');
    const { stdout, stderr } = await run('sh', ['-c', `zcat "${page}" | groff -man -ww -Tutf8 2>&1 >/dev/null; zcat "${page}" | groff -man -Tascii | col -bx`]);
    expect(stderr).toBe('');
    expect(stdout).not.toMatch(/warning/);
    expect(stdout).toMatch(/NAME\s+lb - TCP load balancer/);
    expect(stdout).toContain('lb --check /etc/lb/lb.toml');
  });

  describe('maintainer scripts', () => {
    let scripts = '';
    beforeAll(async () => {
      scripts = mkdtempSync(join(tmpdir(), 'lb-deb-control-'));
      await run('dpkg-deb', ['-e', built.deb, scripts]);
    });
    afterAll(() => rmSync(scripts, { recursive: true, force: true }));

    /** Runs the postinst's start decision on a config, with the unpacked lb: "start" or "no start". */
    async function decision(config: string): Promise<string> {
      const { stdout } = await run(
        'sh',
        ['-c', '. "$1"; if lb_config_valid "$2" "$3" && ! lb_config_is_placeholder "$2"; then echo start; else echo "no start"; fi', 'sh', join(scripts, 'postinst'), config, join(root, 'usr/bin/lb')],
        { env: { PATH: process.env.PATH, LB_MAINTSCRIPT_FUNCTIONS_ONLY: '1' } },
      );
      return stdout.trim();
    }

    it('the postinst starts lb only once /etc/lb/lb.toml is no longer the example and passes --check', async () => {
      const shipped = readFileSync(join(root, 'etc/lb/lb.toml'), 'utf8');
      expect(await decision(join(root, 'etc/lb/lb.toml'))).toBe('no start');
      const edited = join(scripts, 'edited.toml');
      writeFileSync(edited, shipped.replace('127.0.0.1:10080', '127.0.0.1:10090'));
      expect(await decision(edited)).toBe('start');
      const broken = join(scripts, 'broken.toml');
      writeFileSync(broken, shipped.replace('policy = "rr"', 'policy = "nonsense"'));
      expect(await decision(broken)).toBe('no start');
    });

    it('purge removes /var/lib/lb; remove keeps it', async () => {
      const fsRoot = mkdtempSync(join(tmpdir(), 'lb-dpkg-root-'));
      try {
        mkdirSync(join(fsRoot, 'var/lib/lb'), { recursive: true });
        writeFileSync(join(fsRoot, 'var/lib/lb/state.json'), '{}\n');
        // DPKG_ROOT: dpkg's own variable for a system under another root; deb-systemd-helper honours it too.
        const env = { PATH: process.env.PATH!.split(delimiter).concat('/usr/sbin', '/sbin').join(delimiter), DPKG_ROOT: fsRoot };
        await run('sh', [join(scripts, 'postrm'), 'remove'], { env });
        expect(existsSync(join(fsRoot, 'var/lib/lb/state.json'))).toBe(true);
        await run('sh', [join(scripts, 'postrm'), 'purge'], { env });
        expect(existsSync(join(fsRoot, 'var/lib/lb'))).toBe(false);
      } finally {
        rmSync(fsRoot, { recursive: true, force: true });
      }
    });
  });
});

if (!ready) {
  describe('Debian package', () => {
    // Reason: a developer machine without the packaging tools; .ci/run installs them and CI never skips.
    it.skip(`needs ${missing.join(', ')} (CI installs them)`, () => undefined);
  });
}
