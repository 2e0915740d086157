// `npm run package`: a self-contained Debian package, dist/lb_VERSION_amd64.deb.
//
// Debian 12's nodejs is 18 and Node 20 is end-of-life, so the package depends on neither: it ships the
// program bundled into one file (esbuild) beside the Node 24 runtime the project already uses, under
// /usr/lib/lb, with /usr/bin/lb a small launcher. Also: the systemd unit, /etc/lb/lb.toml (a conffile),
// the man page lb(1) rendered from packaging/lb.1.md by go-md2man, the examples, and a postinst that
// creates the `lb` system user.

import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { VERSION } from '../src/version.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist');
const pkg = join(out, 'deb');

function write(path: string, text: string, mode = 0o644): void {
  mkdirSync(dirname(join(pkg, path)), { recursive: true });
  writeFileSync(join(pkg, path), text);
  chmodSync(join(pkg, path), mode);
}

function copy(from: string, to: string, mode = 0o644): void {
  mkdirSync(dirname(join(pkg, to)), { recursive: true });
  copyFileSync(join(root, from), join(pkg, to));
  chmodSync(join(pkg, to), mode);
}

function duKiB(dir: string): number {
  let bytes = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) bytes += statSync(join(e.parentPath, e.name)).size;
  }
  return Math.ceil(bytes / 1024);
}

export async function buildDeb(): Promise<string> {
  rmSync(pkg, { recursive: true, force: true });
  mkdirSync(pkg, { recursive: true });

  await build({
    entryPoints: [join(root, 'src/cli/main.ts')],
    outfile: join(pkg, 'usr/lib/lb/lb.mjs'),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node22',
    legalComments: 'none',
    // The bundled CommonJS dependencies (ajv, telnetlib) call require() for Node's own modules.
    banner: { js: "import { createRequire as __lbRequire } from 'node:module'; const require = __lbRequire(import.meta.url);" },
    logLevel: 'warning',
  });
  // The Node 24 runtime that runs the tests: process.execPath under `npm run`.
  mkdirSync(join(pkg, 'usr/lib/lb'), { recursive: true });
  copyFileSync(process.execPath, join(pkg, 'usr/lib/lb/node'));
  chmodSync(join(pkg, 'usr/lib/lb/node'), 0o755);
  // Relative to its own location, so the package also runs unpacked under another root (the tests do).
  write(
    'usr/bin/lb',
    '#!/bin/sh\n# lb: the bundled program on the bundled Node runtime.\nhere=$(dirname "$(readlink -f "$0")")\nexec "$here/../lib/lb/node" "$here/../lib/lb/lb.mjs" "$@"\n',
    0o755,
  );
  copy('packaging/lb.service', 'lib/systemd/system/lb.service');
  copy('packaging/lb.toml', 'etc/lb/lb.toml');
  const man = execFileSync('go-md2man', ['-in', join(root, 'packaging/lb.1.md')]);
  mkdirSync(join(pkg, 'usr/share/man/man1'), { recursive: true });
  writeFileSync(join(pkg, 'usr/share/man/man1/lb.1.gz'), gzipSync(man, { level: 9 }));
  cpSync(join(root, 'examples'), join(pkg, 'usr/share/doc/lb/examples'), { recursive: true });
  copy('README.md', 'usr/share/doc/lb/README.md');
  write(
    'usr/share/doc/lb/copyright',
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: lb\nLicense: MIT\n\n' +
      'Files: usr/lib/lb/node\nLicense: MIT (Node.js), with the licenses of its bundled dependencies\n',
  );

  const installedKiB = duKiB(pkg);
  write(
    'DEBIAN/control',
    [
      'Package: lb',
      `Version: ${VERSION}`,
      'Architecture: amd64',
      'Maintainer: lb developers <lb@localhost>',
      `Installed-Size: ${installedKiB}`,
      'Depends: libc6 (>= 2.28), libstdc++6, adduser',
      'Section: net',
      'Priority: optional',
      'Description: TCP load balancer with failover groups, health checks and a Telnet control port',
      ' lb forwards TCP connections to backends chosen from ordered groups (round robin, client-IP',
      ' hash, least connections, weighted, first-fit), with health checks, queueing, a Telnet',
      " stats/control port, MRTG output, and the classic balance command line. It ships its own",
      ' Node.js 24 runtime.',
      '',
    ].join('\n'),
  );
  write('DEBIAN/conffiles', '/etc/lb/lb.toml\n');
  write(
    'DEBIAN/postinst',
    `#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd lb >/dev/null; then
    adduser --system --group --no-create-home --home /nonexistent --quiet lb
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    systemctl enable lb.service >/dev/null || true
    if systemctl is-active --quiet lb.service; then systemctl try-restart lb.service || true; else systemctl start lb.service || true; fi
  fi
fi
`,
    0o755,
  );
  write(
    'DEBIAN/prerm',
    `#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop lb.service >/dev/null || true
  systemctl disable lb.service >/dev/null || true
fi
`,
    0o755,
  );
  write(
    'DEBIAN/postrm',
    `#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi
`,
    0o755,
  );

  const deb = join(out, `lb_${VERSION}_amd64.deb`);
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '-z6', '--build', pkg, deb], { stdio: ['ignore', 'ignore', 'inherit'] });
  return deb;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const deb = await buildDeb();
  process.stdout.write(`${deb} (${Math.round(statSync(deb).size / 1048576)} MiB)\n`);
}
