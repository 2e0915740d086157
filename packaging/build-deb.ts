// `npm run package`: a self-contained Debian package, dist/lb_VERSION_amd64.deb.
//
// Debian 12's nodejs is 18 and Node 20 is end-of-life, so the package depends on neither: it ships the
// program bundled by esbuild (the main program and one bundle per worker-thread entry, src/entries.ts)
// beside the Node 24 runtime the project already uses, stripped, under /usr/lib/lb, with /usr/bin/lb a
// small launcher. Also: the systemd unit, /etc/lb/lb.toml (a conffile), the man page lb(1) rendered from
// packaging/lb.1.md by go-md2man, the changelog, the copyright of everything bundled, the examples, the
// lintian overrides for what a bundled runtime cannot avoid, and the maintainer scripts in packaging/.
//
// The tools come first: a missing one is one line naming the Debian package to install, never a trace.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, chmodSync, constants, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, type Metafile } from 'esbuild';
import { BUNDLE_ENTRIES } from '../src/entries.ts';
import { VERSION } from '../src/version.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist');
const pkg = join(out, 'deb');
const lib = 'usr/lib/lb';
/** Also the signature of packaging/changelog's entries. */
export const MAINTAINER = 'lb developers <lb@example.org>';

/** Command → the Debian package that provides it. */
export const PACKAGING_TOOLS: Readonly<Record<string, string>> = {
  'dpkg-deb': 'dpkg',
  strip: 'binutils',
  'go-md2man': 'go-md2man',
};

/** The commands `PACKAGING_TOOLS` lists that are not on PATH. */
export function missingTools(tools: Readonly<Record<string, string>> = PACKAGING_TOOLS): string[] {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  return Object.keys(tools).filter(
    (tool) =>
      !dirs.some((d) => {
        try {
          accessSync(join(d, tool), constants.X_OK);
          return true;
        } catch {
          return false;
        }
      }),
  );
}

/** A build that cannot go on for a reason the user can fix: printed as one line, no trace. */
export class PackagingError extends Error {
  readonly exitCode: number;

  constructor(message: string, exitCode: number) {
    super(message);
    this.exitCode = exitCode;
  }
}

export interface BuildResult {
  deb: string;
  /** What was bundled or left out, for the build output. */
  notes: string[];
}

function write(path: string, text: string | Buffer, mode = 0o644): void {
  mkdirSync(dirname(join(pkg, path)), { recursive: true });
  writeFileSync(join(pkg, path), text);
  chmodSync(join(pkg, path), mode);
}

/** Copies with an explicit mode: a checkout's umask (0664 files) must not reach the package. */
function copy(from: string, to: string, mode = 0o644): void {
  mkdirSync(dirname(join(pkg, to)), { recursive: true });
  copyFileSync(join(root, from), join(pkg, to));
  chmodSync(join(pkg, to), mode);
}

function duKiB(dir: string): number {
  let bytes = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && !join(e.parentPath, e.name).startsWith(join(dir, 'DEBIAN'))) bytes += statSync(join(e.parentPath, e.name)).size;
  }
  return Math.ceil(bytes / 1024);
}

/** DEBIAN/md5sums: "MD5  path" for every file of the package but `except`. */
function md5sums(except: string[]): string {
  const lines: string[] = [];
  for (const e of readdirSync(pkg, { withFileTypes: true, recursive: true })) {
    const path = join(e.parentPath, e.name).slice(pkg.length + 1);
    if (!e.isFile() || path.startsWith('DEBIAN/') || except.includes(path)) continue;
    lines.push(`${createHash('md5').update(readFileSync(join(pkg, path))).digest('hex')}  ${path}`);
  }
  return lines.sort((a, b) => a.slice(34).localeCompare(b.slice(34))).join('\n') + '\n';
}

/** gzip -9n: maximum compression, no name and no time stamp in the header (a reproducible file). */
function gzip9n(data: Buffer | string): Buffer {
  return gzipSync(data, { level: 9 }); // zlib's gzip header carries neither a name nor a time
}

/** The version of the newest entry of a Debian changelog. */
function changelogVersion(text: string): string | null {
  return /^lb \(([^)]+)\)/.exec(text)?.[1] ?? null;
}

/** Every npm package esbuild put into a bundle, from its metafile's inputs. */
function bundledPackages(meta: Metafile): string[] {
  const names = new Set<string>();
  for (const input of Object.keys(meta.inputs)) {
    const m = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (m) names.add(m[1]!);
  }
  return [...names].sort();
}

/** SPDX → the short names of Debian's copyright format (Expat is Debian's name for the MIT license). */
const DEP5_LICENSE: Readonly<Record<string, string>> = { MIT: 'Expat', 'BSD-3-Clause': 'BSD-3-clause', 'Apache-2.0': 'Apache-2.0', ISC: 'ISC' };

/** A license text as a DEP-5 continuation: each line indented by one space, blank lines as " .". */
function dep5Text(text: string): string {
  return text
    .trim()
    .split('\n')
    .map((l) => (l.trim() === '' ? ' .' : ` ${l.trimEnd()}`))
    .join('\n');
}

/** The Expat (MIT) license without a copyright line: lb's own license, and Debian's name for it. */
const EXPAT = `Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction, including
without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the
following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial
portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO
EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN
AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE
OR OTHER DEALINGS IN THE SOFTWARE.`;

/** debian/copyright in DEP-5: lb itself, the bundled Node runtime, and every npm package in the bundles. */
function copyright(packages: string[]): string {
  const holders = ['2026 the lb developers'];
  const licenses = new Set(['Expat']);
  const origins: string[] = [];
  const texts = new Map<string, string>([['Expat', EXPAT]]);
  for (const name of packages) {
    const dir = join(root, 'node_modules', name);
    const meta = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { license?: string; version?: string; author?: string | { name?: string } };
    const spdx = meta.license ?? 'UNKNOWN';
    const license = DEP5_LICENSE[spdx];
    if (!license) throw new PackagingError(`${name}: license "${spdx}" has no Debian copyright name in build-deb.ts (DEP5_LICENSE)`, 70);
    const file = readdirSync(dir).find((f) => /^licen[cs]e(\.md|\.txt)?$/i.test(f));
    const text = file ? readFileSync(join(dir, file), 'utf8') : '';
    const notice = /^\s*Copyright\s*(?:\(c\)|©)?\s*(.*)$/im.exec(text)?.[1]?.trim();
    const author = typeof meta.author === 'string' ? meta.author : meta.author?.name;
    holders.push(`${notice || author || `the ${name} authors`} (${name})`);
    licenses.add(license);
    origins.push(`${name} ${meta.version ?? ''} (${license})`);
    // Apache-2.0's text is in /usr/share/common-licenses; the others are short and go in full, less
    // their copyright lines (those are in the Files paragraph).
    if (license !== 'Apache-2.0' && !texts.has(license) && text) texts.set(license, text.replace(/^\s*Copyright\b.*$/gim, ''));
  }
  const paragraphs: string[] = [
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: lb',
    'Files: *\nCopyright: 2026 the lb developers\nLicense: Expat',
    // One bundle holds lb's code and the code of these npm packages together, under all their licenses.
    `Files: usr/lib/lb/*.js\nCopyright: ${holders.join('\n ')}\nLicense: ${[...licenses].join(' and ')}\nComment: esbuild bundles of lb with the npm packages:\n ${origins.join(',\n ')}.`,
    `Files: usr/lib/lb/node\nCopyright: Node.js contributors, Joyent, Inc. and other Node contributors\nLicense: Expat\nComment: Node.js ${process.version}. It bundles V8, libuv, OpenSSL, zlib, ICU, llhttp and other libraries under\n their own permissive licenses, listed with their full texts in Node.js's LICENSE file:\n https://github.com/nodejs/node/blob/${process.version}/LICENSE`,
  ];
  for (const [license, text] of texts) paragraphs.push(`License: ${license}\n${dep5Text(text)}`);
  if (licenses.has('Apache-2.0')) {
    paragraphs.push('License: Apache-2.0\n On Debian systems the full text of the Apache License 2.0 is in\n /usr/share/common-licenses/Apache-2.0.');
  }
  return paragraphs.join('\n\n') + '\n';
}

export async function buildDeb(log: (line: string) => void = () => undefined): Promise<BuildResult> {
  const missing = missingTools();
  if (missing.length) {
    const debs = [...new Set(missing.map((t) => PACKAGING_TOOLS[t]!))];
    throw new PackagingError(`needs ${missing.join(', ')}: apt-get install ${debs.join(' ')}`, 69);
  }
  const changelog = readFileSync(join(root, 'packaging/changelog'), 'utf8');
  if (changelogVersion(changelog) !== VERSION) {
    throw new PackagingError(`packaging/changelog's newest entry is ${changelogVersion(changelog)}, package.json's version ${VERSION}: add an entry`, 65);
  }
  const notes: string[] = [];
  rmSync(pkg, { recursive: true, force: true });
  mkdirSync(join(pkg, lib), { recursive: true });

  // The main program plus one bundle per worker-thread entry whose source exists yet (src/entries.ts says
  // where the running bundle looks for them: NAME.js beside the main bundle). Bundles share nothing: a
  // worker loads only its own file.
  const entryPoints: Record<string, string> = { lb: join(root, 'src/cli/main.ts') };
  for (const [name, source] of Object.entries(BUNDLE_ENTRIES)) {
    const file = join(root, 'src', source);
    if (existsSync(file)) {
      entryPoints[name] = file;
      notes.push(`bundled ${name}.js from src/${source.replace(/^\.\//, '')}`);
    } else {
      notes.push(`skipped ${name}.js: src/${source.replace(/^\.\//, '')} does not exist yet`);
    }
  }
  let meta: Metafile;
  try {
    ({ metafile: meta } = await build({
      entryPoints,
      outdir: join(pkg, lib),
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node22',
      legalComments: 'none', // their licenses are in the copyright file
      metafile: true,
      // The bundled CommonJS dependencies (ajv, telnetlib) call require() for Node's own modules.
      banner: { js: "import { createRequire as __lbRequire } from 'node:module'; const require = __lbRequire(import.meta.url);" },
      logLevel: 'silent',
    }));
  } catch (err) {
    const errors = (err as { errors?: { text: string; location?: { file: string; line: number; column: number } | null }[] }).errors;
    if (!errors?.length) throw err;
    const e = errors[0]!;
    const where = e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ` : '';
    throw new PackagingError(`esbuild: ${where}${e.text}${errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}`, 65);
  }
  // `.js` files that are ES modules: the type comes from here, not from Node guessing.
  write(`${lib}/package.json`, '{ "type": "module" }\n');
  // The bundle is a module the launcher hands to the bundled runtime, not a script: no #! line (esbuild
  // keeps main.ts's `#!/usr/bin/env node`). With `#!/usr/lib/lb/node` lintian still reports
  // missing-dep-for-interpreter and wrong-path-for-interpreter (it knows node only as /usr/bin/node).
  write(`${lib}/lb.js`, readFileSync(join(pkg, lib, 'lb.js'), 'utf8').replace(/^#![^\n]*\n/, ''));

  const addon = join(root, 'build/lb_splice.node');
  if (existsSync(addon)) {
    copy('build/lb_splice.node', `${lib}/lb_splice.node`);
    execFileSync('strip', ['--strip-unneeded', '--remove-section=.comment', '--remove-section=.note', join(pkg, lib, 'lb_splice.node')]);
    notes.push('included lb_splice.node from build/lb_splice.node (the splice(2) relay)');
  } else {
    notes.push('left out lb_splice.node: build/lb_splice.node does not exist (no compiler at npm install?); the JS relay is used');
  }

  // The Node 24 runtime that runs this build (process.execPath under `npm run`), without its symbols
  // (lintian: unstripped-binary-or-object; about 18 MB). Checked to still run after stripping.
  const node = join(pkg, lib, 'node');
  copyFileSync(process.execPath, node);
  chmodSync(node, 0o755);
  execFileSync('strip', ['--strip-all', '--remove-section=.comment', node]);
  const stripped = execFileSync(node, ['-p', 'process.version'], { encoding: 'utf8' }).trim();
  if (stripped !== process.version) throw new PackagingError(`the stripped Node runtime answers ${JSON.stringify(stripped)}, not ${process.version}`, 70);

  // Relative to its own location, so the package also runs unpacked under another root (the tests do).
  write(
    'usr/bin/lb',
    '#!/bin/sh\n# lb: the bundled program on the bundled Node runtime.\nhere=$(dirname "$(readlink -f "$0")")\nexec "$here/../lib/lb/node" "$here/../lib/lb/lb.js" "$@"\n',
    0o755,
  );
  copy('packaging/lb.service', 'lib/systemd/system/lb.service');
  copy('packaging/lb.toml', 'etc/lb/lb.toml');
  const man = execFileSync('go-md2man', ['-in', join(root, 'packaging/lb.1.md')]);
  write('usr/share/man/man1/lb.1.gz', gzip9n(man));
  for (const f of readdirSync(join(root, 'examples'))) copy(join('examples', f), join('usr/share/doc/lb/examples', f));
  copy('README.md', 'usr/share/doc/lb/README.md');
  write('usr/share/doc/lb/changelog.gz', gzip9n(changelog));
  write('usr/share/doc/lb/copyright', copyright(bundledPackages(meta)));
  // Comments stay in the installed file: lintian ignores them, a reader of the package sees the reasons.
  copy('packaging/lb.lintian-overrides', 'usr/share/lintian/overrides/lb');

  const installedKiB = duKiB(pkg);
  write(
    'DEBIAN/control',
    [
      'Package: lb',
      `Version: ${VERSION}`,
      'Architecture: amd64',
      `Maintainer: ${MAINTAINER}`,
      `Installed-Size: ${installedKiB}`,
      'Depends: libc6 (>= 2.28), libstdc++6, adduser',
      'Section: net',
      'Priority: optional',
      'Description: TCP load balancer with failover groups and a Telnet control port',
      ' lb forwards TCP connections to backends chosen from ordered groups',
      ' (round robin, client-IP hash, least connections, weighted, first-fit),',
      ' with health checks, queueing, a Telnet stats/control port, MRTG output',
      ' and the classic balance command line.',
      ' .',
      ' It ships its own Node.js 24 runtime.',
      '',
    ].join('\n'),
  );
  write('DEBIAN/conffiles', '/etc/lb/lb.toml\n');
  // For `dpkg --verify` and debsums; conffiles left out, as dh_md5sums does (dpkg tracks their sums).
  write('DEBIAN/md5sums', md5sums(['etc/lb/lb.toml']));
  const placeholderMd5 = createHash('md5').update(readFileSync(join(root, 'packaging/lb.toml'))).digest('hex');
  write('DEBIAN/postinst', readFileSync(join(root, 'packaging/postinst'), 'utf8').replaceAll('@PLACEHOLDER_MD5@', placeholderMd5), 0o755);
  copy('packaging/prerm', 'DEBIAN/prerm', 0o755);
  copy('packaging/postrm', 'DEBIAN/postrm', 0o755);

  mkdirSync(out, { recursive: true });
  const deb = join(out, `lb_${VERSION}_amd64.deb`);
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '-z6', '--build', pkg, deb], { stdio: ['ignore', 'ignore', 'inherit'] });
  for (const n of notes) log(n);
  return { deb, notes };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const started = performance.now();
  try {
    const { deb } = await buildDeb((line) => process.stdout.write(`${line}\n`));
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    process.stdout.write(`${deb} (${(statSync(deb).size / 1048576).toFixed(1)} MiB, ${seconds} s)\n`);
  } catch (err) {
    if (!(err instanceof PackagingError)) throw err;
    process.stderr.write(`npm run package: ${err.message}\n`);
    process.exitCode = err.exitCode;
  }
}
