// Regenerates the README's generated blocks (`npm run docs`): the `lb --help` text and the config
// reference from the schema. A test fails when the README's copy is stale.

import { readFileSync, writeFileSync } from 'node:fs';
import { configReference } from '../config/reference.ts';
import { USAGE } from './usage.ts';

function replaceBlock(text: string, name: string, body: string): string {
  const re = new RegExp(`(<!-- generated:${name}[^>]*-->\\n)[\\s\\S]*?(<!-- /generated:${name} -->)`);
  if (!re.test(text)) throw new Error(`README has no generated:${name} block`);
  return text.replace(re, (_m, open: string, close: string) => `${open}${body}${close}`);
}

export function renderReadme(text: string): string {
  let out = replaceBlock(text, 'usage', '```\n' + USAGE + '```\n');
  out = replaceBlock(out, 'config-reference', configReference());
  return out;
}

if (import.meta.filename === process.argv[1]) {
  const file = new URL('../../README.md', import.meta.url);
  writeFileSync(file, renderReadme(readFileSync(file, 'utf8')));
}
