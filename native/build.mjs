#!/usr/bin/env node
// Builds build/lb_splice.node (the splice(2) relay addon) with the machine's C compiler against the
// Node-API headers of the `node-api-headers` package. Nothing is downloaded: no node-gyp, no headers
// tarball. Plain JavaScript so that it runs under any Node that npm starts.
//
//   node native/build.mjs            build; exit 1 on failure (npm run build:native)
//   node native/build.mjs --install  the package's install step: a failed build is not an error, lb
//                                    then runs the JS relay, and one line says so
//
// CC overrides the compiler (default `cc`).

import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const installing = process.argv.includes('--install');
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'build', 'lb_splice.node');

function giveUp(why) {
  if (installing) {
    console.log(`lb: splice addon not built (${why}); the JS relay will be used`);
    process.exit(0);
  }
  console.error(`lb: splice addon not built: ${why}`);
  process.exit(1);
}

if (process.platform !== 'linux') giveUp(`splice(2) is Linux only, this is ${process.platform}`);

let include;
try {
  include = createRequire(import.meta.url)('node-api-headers').include_dir;
} catch {
  giveUp('the node-api-headers package is not installed');
}

const cc = process.env.CC || 'cc';
mkdirSync(dirname(out), { recursive: true });
// Written beside and renamed, so a running lb never loads a half-written file.
const tmp = `${out}.${process.pid}.tmp`;
const args = [
  '-O2',
  '-std=gnu11',
  '-Wall',
  '-Wextra',
  '-shared',
  '-fPIC',
  '-fvisibility=hidden',
  '-pthread',
  '-I',
  include,
  join(root, 'native', 'lb_splice.c'),
  '-o',
  tmp,
];
const run = spawnSync(cc, args, { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' });
if (run.error || run.status !== 0) {
  rmSync(tmp, { force: true });
  rmSync(out, { force: true }); // an older build must not be loaded as if it were this source's
  const detail = run.error ? run.error.message : (run.stderr.trim().split('\n')[0] ?? `exit ${run.status}`);
  if (!installing && run.stderr) process.stderr.write(run.stderr);
  giveUp(`${cc}: ${detail}`);
}
if (run.stderr.trim()) process.stderr.write(run.stderr); // warnings
renameSync(tmp, out);
if (!installing) console.log(`lb: built ${out}`);
