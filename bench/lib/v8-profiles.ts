// Reading what V8 writes: a `.cpuprofile` (node --cpu-prof) summarised as self and inclusive time per
// function, and `.heapsnapshot` files (node --heapsnapshot-signal) summarised as bytes and objects per
// kind, so that two snapshots can be subtracted (held connections minus none = bytes per connection).

import fs from 'node:fs';

// ------------------------------------------------------------------------------------------- CPU

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionTime {
  name: string;
  where: string;
  /** Milliseconds spent in the function itself. */
  selfMs: number;
  /** Milliseconds in the function and everything it called (each call chain counted once). */
  totalMs: number;
}

export interface CpuSummary {
  /** Sampled wall time of the profile, idle included. */
  wallMs: number;
  /** Everything but (idle): the CPU time the percentages are of. */
  busyMs: number;
  functions: FunctionTime[];
  /** Self time by origin: lb's source, Node's internals by module, GC, native (program), ... */
  byOrigin: Record<string, number>;
}

function where(cf: CallFrame): string {
  if (!cf.url) return '';
  const u = cf.url.replace(/^file:\/\/.*?\/(src|bench|node_modules)\//, '$1/');
  return `${u}:${cf.lineNumber + 1}`;
}

function origin(cf: CallFrame): string {
  const n = cf.functionName;
  if (n === '(idle)' || n === '(garbage collector)' || n === '(program)' || n === '(root)') return n;
  if (!cf.url) return '(native)';
  if (/\/src\//.test(cf.url) && cf.url.startsWith('file:')) return 'lb src/' + cf.url.replace(/^.*\/src\//, '').replace(/\/[^/]*$/, '/');
  if (cf.url.startsWith('node:')) return cf.url;
  if (cf.url.includes('/node_modules/')) return 'node_modules';
  return 'other';
}

/**
 * Summarises the samples taken between fromMs and toMs after the profile started (all of them by
 * default): a window leaves out start-up and warm-up, so the figures are those of the steady state.
 */
export function summariseCpuProfile(file: string, fromMs = 0, toMs = Infinity): CpuSummary {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  // Sample i lasts until sample i+1; the last one gets the mean interval.
  const selfUs = new Map<number, number>();
  const mean = p.samples.length ? p.timeDeltas.reduce((a, b) => a + b, 0) / p.samples.length : 0;
  let total = 0;
  let at = 0;
  for (let i = 0; i < p.samples.length; i++) {
    at += p.timeDeltas[i]!;
    if (at < fromMs * 1000 || at > toMs * 1000) continue;
    const d = Math.max(0, i + 1 < p.timeDeltas.length ? p.timeDeltas[i + 1]! : mean);
    selfUs.set(p.samples[i]!, (selfUs.get(p.samples[i]!) ?? 0) + d);
    total += d;
  }
  const key = (n: ProfileNode): string => `${n.callFrame.functionName || '(anonymous)'}\u0000${where(n.callFrame)}`;
  const fns = new Map<string, FunctionTime>();
  const fn = (n: ProfileNode): FunctionTime => {
    const k = key(n);
    let f = fns.get(k);
    if (!f) fns.set(k, (f = { name: n.callFrame.functionName || '(anonymous)', where: where(n.callFrame), selfMs: 0, totalMs: 0 }));
    return f;
  };
  const byOrigin: Record<string, number> = {};
  let idleUs = 0;
  // Depth-first from the root; `open` holds the functions already on the current call chain, so a
  // recursive function's inclusive time is counted once.
  const open = new Map<string, number>();
  const visit = (id: number): number => {
    const n = byId.get(id)!;
    const self = selfUs.get(id) ?? 0;
    const k = key(n);
    open.set(k, (open.get(k) ?? 0) + 1);
    let sub = 0;
    for (const c of n.children ?? []) sub += visit(c);
    open.set(k, open.get(k)! - 1);
    const f = fn(n);
    f.selfMs += self / 1000;
    if (open.get(k) === 0) f.totalMs += (self + sub) / 1000;
    const o = origin(n.callFrame);
    byOrigin[o] = (byOrigin[o] ?? 0) + self / 1000;
    if (n.callFrame.functionName === '(idle)') idleUs += self;
    return self + sub;
  };
  visit(p.nodes[0]!.id);
  return {
    wallMs: total / 1000,
    busyMs: (total - idleUs) / 1000,
    functions: [...fns.values()].filter((f) => f.name !== '(root)'),
    byOrigin,
  };
}

// ------------------------------------------------------------------------------------------ heap

export interface HeapKinds {
  /** "type name" (e.g. "object Socket", "closure onread", "array (object elements)") → bytes and count. */
  kinds: Map<string, { bytes: number; count: number }>;
  totalBytes: number;
}

interface HeapSnapshotFile {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

export function summariseHeapSnapshot(file: string): HeapKinds {
  const h = JSON.parse(fs.readFileSync(file, 'utf8')) as HeapSnapshotFile;
  const fields = h.snapshot.meta.node_fields;
  const types = h.snapshot.meta.node_types[0];
  const F = fields.length;
  const iType = fields.indexOf('type');
  const iName = fields.indexOf('name');
  const iSize = fields.indexOf('self_size');
  const kinds = new Map<string, { bytes: number; count: number }>();
  let totalBytes = 0;
  for (let i = 0; i < h.nodes.length; i += F) {
    const type = types[h.nodes[i + iType]!]!;
    let name = h.strings[h.nodes[i + iName]!]!;
    // Strings and numbers are named by their value: group them by type only.
    if (type === 'string' || type === 'concatenated string' || type === 'sliced string' || type === 'number' || type === 'code') name = '';
    else if (name.length > 60) name = name.slice(0, 57) + '…';
    const k = name ? `${type} ${name}` : type;
    const size = h.nodes[i + iSize]!;
    const e = kinds.get(k);
    if (e) {
      e.bytes += size;
      e.count++;
    } else kinds.set(k, { bytes: size, count: 1 });
    totalBytes += size;
  }
  return { kinds, totalBytes };
}

/** What `after` holds beyond `before`, per kind, largest first. */
export function diffHeaps(before: HeapKinds, after: HeapKinds): { kind: string; bytes: number; count: number }[] {
  const out: { kind: string; bytes: number; count: number }[] = [];
  for (const [k, a] of after.kinds) {
    const b = before.kinds.get(k) ?? { bytes: 0, count: 0 };
    if (a.bytes !== b.bytes || a.count !== b.count) out.push({ kind: k, bytes: a.bytes - b.bytes, count: a.count - b.count });
  }
  return out.sort((x, y) => y.bytes - x.bytes);
}
