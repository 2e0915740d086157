// Where the files that start their own thread live, in the source tree, the npm package and the bundle.
//
// Worker threads are started from a file, not a function. In the source tree (Node runs the TypeScript
// directly) that is the module itself; the npm package has the same tree compiled file for file into
// lib/ (packaging/build-npm.ts), so the module's .js; in the Debian package everything is bundled by
// esbuild, one bundle per entry, all in one directory, so a worker's file is `NAME.js` beside the main
// bundle.

const SOURCE: Readonly<Record<EntryName, string>> = {
  'data-plane': './worker/main.ts',
  'config-parse': './config/parse-worker.ts',
};

export type EntryName = 'data-plane' | 'config-parse';

/** How this copy of lb is laid out: TypeScript sources, their compiled tree (npm), or bundles (.deb). */
const layout: 'source' | 'compiled' | 'bundle' = import.meta.url.endsWith('.ts') ? 'source' : import.meta.url.endsWith('/entries.js') ? 'compiled' : 'bundle';
const bundled = layout === 'bundle';

/** The file a worker thread of this kind runs. */
export function entryUrl(name: EntryName): URL {
  return new URL(bundled ? `./${name}.js` : layout === 'compiled' ? SOURCE[name].replace(/\.ts$/, '.js') : SOURCE[name], import.meta.url);
}

/** Entry points the package build bundles (source path relative to `src/` → bundle name). */
export const BUNDLE_ENTRIES: Readonly<Record<EntryName, string>> = SOURCE;

/**
 * The compiled splice(2) addon: `build/lb_splice.node` at the project root in the source tree and the
 * npm package (where its install step builds it), beside the bundle in the Debian package. Its absence
 * is normal (no compiler at install): the JS relay is used.
 */
export function addonPath(): URL {
  return new URL(bundled ? './lb_splice.node' : '../build/lb_splice.node', import.meta.url);
}
