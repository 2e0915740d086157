// `npm pack`'s prepack step: the JavaScript the npm package runs. Node strips types only outside
// node_modules, so an installed lb must be JavaScript: tsc compiles src/ file for file (no bundling: the
// package's dependencies stay ordinary dependencies, and a stack trace names the same files as the
// source) into lib/, at the same depth as src/, so that every relative path the code resolves from its
// own URL (package.json, schemas/, build/lb_splice.node, a worker's module) is the same in both trees.
// The Debian package bundles instead (packaging/build-deb.ts).

import { execFileSync } from 'node:child_process';
import { chmodSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const out = join(root, 'dist', 'npm-build'); // tsconfig.build.json's outDir
const lib = join(root, 'lib');

rmSync(out, { recursive: true, force: true });
rmSync(lib, { recursive: true, force: true });
execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
// tsc mirrors the root (src/, and the JSON files src/ imports, which the package ships where they are).
renameSync(join(out, 'src'), lib);
rmSync(out, { recursive: true, force: true });
chmodSync(join(lib, 'cli', 'main.js'), 0o755); // the `lb` bin: npm links it, the #! line runs it
// stderr: `npm pack --json` prints its JSON on stdout, where this would land in the middle of it.
console.error('lib/: src/ compiled for the npm package');
