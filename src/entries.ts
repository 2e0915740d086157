// Where the files that start their own thread live, in the source tree and in the bundle.
//
// Worker threads are started from a file, not a function. In the source tree (Node runs the TypeScript
// directly) that is the module itself; in the Debian package everything is bundled by esbuild, one
// bundle per entry, all in one directory, so a worker's file is `NAME.js` beside the main bundle.

const SOURCE: Readonly<Record<EntryName, string>> = {
  'data-plane': './worker/main.ts',
  'config-parse': './config/parse-worker.ts',
};

export type EntryName = 'data-plane' | 'config-parse';

const bundled = !import.meta.url.endsWith('.ts');

/** The file a worker thread of this kind runs. */
export function entryUrl(name: EntryName): URL {
  return new URL(bundled ? `./${name}.js` : SOURCE[name], import.meta.url);
}

/** Entry points the package build bundles (source path relative to `src/` → bundle name). */
export const BUNDLE_ENTRIES: Readonly<Record<EntryName, string>> = SOURCE;

/**
 * The compiled splice(2) addon: `build/lb_splice.node` at the project root in the source tree, beside
 * the bundle in the package. Its absence is normal (no compiler at install): the JS relay is used.
 */
export function addonPath(): URL {
  return new URL(bundled ? './lb_splice.node' : '../build/lb_splice.node', import.meta.url);
}
