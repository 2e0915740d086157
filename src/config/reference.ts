// The configuration reference, generated from the schema's descriptions and defaults, so the docs
// cannot drift from what `lb --check` enforces. `lb --config-reference` prints it; the README embeds it
// (a test checks that the copy is current).

import { schema } from './validate.ts';

interface Node {
  description?: string;
  default?: unknown;
  type?: string | string[];
  enum?: unknown[];
  $ref?: string;
  properties?: Record<string, Node>;
  additionalProperties?: Node | boolean;
  items?: Node;
  then?: Node;
  minimum?: number;
}

const defs = (schema as { definitions: Record<string, Node> }).definitions;

function resolve(node: Node): Node {
  if (!node.$ref) return node;
  const target = defs[node.$ref.replace('#/definitions/', '')]!;
  return { ...resolve(target), ...node, $ref: undefined, description: node.description ?? target.description };
}

function typeOf(node: Node): string {
  const n = resolve(node);
  if (n.enum) return n.enum.map((v) => JSON.stringify(v)).join(' \\| ');
  if (node.$ref === '#/definitions/duration') return 'duration';
  if (node.$ref === '#/definitions/address') return 'address';
  const t = Array.isArray(n.type) ? n.type.join(' or ') : (n.type ?? 'table');
  return t === 'object' ? 'table' : t;
}

function rows(prefix: string, node: Node, out: string[]): void {
  const n = resolve(node);
  const props = n.properties ?? n.then?.properties;
  if (!props) return;
  for (const [key, raw] of Object.entries(props)) {
    const child = resolve(raw);
    const path = `${prefix}${key}`;
    const def = child.default === undefined ? '' : `\`${JSON.stringify(child.default)}\``;
    const desc = (child.description ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' ');
    out.push(`| \`${path}\` | ${typeOf(raw)} | ${def} | ${desc} |`);
    // A backend's health override takes the group's keys again; listing them twice helps nobody.
    if (raw.$ref === '#/definitions/healthOverride') continue;
    if (child.properties || child.then?.properties) rows(`${path}.`, child, out);
    if (child.items) rows(`${path}[].`, child.items, out);
    if (typeof child.additionalProperties === 'object') rows(`${path}.NAME.`, child.additionalProperties, out);
  }
}

export function configReference(): string {
  const out = ['| key | type | default | meaning |', '|---|---|---|---|'];
  rows('', schema as Node, out);
  return out.join('\n') + '\n';
}
