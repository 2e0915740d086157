// Writing the running table back to its file, atomically, so runtime changes survive a restart.
//
// The new text goes to a temporary file in the same directory, is flushed to disk, and replaces the
// config with one rename: a reader (or a crash) sees the old file or the new one, never half of one.
// The previous file is kept as FILE.bak. (txLoadBalancer's write-back was not atomic in 1.1.0 and broken
// in 1.2.0.)

import { closeSync, copyFileSync, existsSync, fsyncSync, openSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import type { RoutingTable } from './table.ts';
import { docToToml, tableToDoc } from './to-toml.ts';

export function saveTable(table: RoutingTable, file: string, version: string): void {
  const header = `# Written by lb ${version} \`save\` at ${new Date().toISOString()}.\n# The previous file is ${file}.bak.\n\n`;
  const text = docToToml(tableToDoc(table), header);
  const tmp = `${file}.tmp-${process.pid}`;
  const mode = existsSync(file) ? statSync(file).mode & 0o777 : 0o644;
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    if (existsSync(file)) copyFileSync(file, `${file}.bak`);
    renameSync(tmp, file);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
    throw err;
  }
}
