// Operator state, kept apart from the config (like HAProxy's server-state file).
//
// What operators change at run time (enable/disable, drain, maxc, weight, create/assign/delete, a group's
// policy) is recorded as the difference between the table the config file gave and the running table, keyed
// by a backend's stable identity: listener, group index, name (default "host:port") and ordinal (the how-
// manyth backend of that name in the group, since unnamed duplicates are allowed). A reload or restart
// compiles the file afresh and re-applies the record to the backends that still exist.
//
// Each change remembers the config's value it replaced. When the file has since changed that value, the
// file wins and the change is skipped (HAProxy does the same with a server's weight): an operator who edits
// the file means what the file says.
//
// Pure except for the file functions at the end, which write the record atomically and read it back.

import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fchmodSync,
  fchownSync,
  fsyncSync,
  lstatSync,
  openSync,
  readFileSync,
  realpathSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { basename, dirname, isAbsolute, join, sep } from 'node:path';
import { Code, Exit, LbError } from '../errors.ts';
import { deepFreeze, POLICIES, type BackendEntry, type GroupEntry, type Policy, type RoutingTable } from './table.ts';
import { formatHostPort } from './values.ts';

export const STATE_VERSION = 1;

/** A slot of one particular table: what the runtime indexes its per-backend state by. */
export interface BackendKey {
  listener: string;
  group: number;
  index: number;
}

/** Who a backend is, across reloads, restarts and edits that move it within its group. */
export interface BackendIdentity {
  listener: string;
  group: number;
  name: string;
  ordinal: number;
}

/** A value the operator set, with the config's value it replaced. */
export interface Change<T> {
  config: T;
  operator: T;
}

export interface Target {
  host: string;
  port: number;
}

export interface BackendChange extends BackendIdentity {
  enabled?: Change<boolean>;
  maxc?: Change<number>;
  weight?: Change<number>;
  /** `assign`: where the operator re-pointed a named backend (`address` is what it resolved to then). */
  target?: Change<Target> & { address: string };
  /** `drain`: no new connections. Runtime state, not in the table; kept like the rest. */
  draining?: true;
  /** `create`: a backend the config does not have, with its place in the group. */
  created?: { host: string; port: number; address: string; maxc: number; weight: number; enabled: boolean; position: number };
  /** `delete`: a backend of the config that the operator removed (its address, to recognise it). */
  deleted?: Target;
}

export interface GroupChange {
  listener: string;
  group: number;
  policy: Change<Policy>;
}

/** The state file's document: JSON, stable across versions of lb that write the same `version`. */
export interface OperatorState {
  version: typeof STATE_VERSION;
  backends: BackendChange[];
  groups: GroupChange[];
  /**
   * The address each backend name last resolved to (HAProxy's `init-addr last`): a name that does not
   * resolve at the next start runs on it (and is retried) instead of down. Not an operator change.
   */
  addresses?: Record<string, string>;
}

export interface ApplyResult {
  table: RoutingTable;
  /** One line per change re-applied, for the log. */
  applied: string[];
  /** One line per change not re-applied, with the reason, for the log. */
  skipped: string[];
  /** The slots of the returned table whose backends are draining. */
  draining: BackendKey[];
}

/** `$STATE_DIRECTORY/state.json` under systemd's StateDirectory= (the first, if several), else none. */
export function defaultStateFile(env: NodeJS.ProcessEnv): string | null {
  const dir = env.STATE_DIRECTORY?.split(':')[0];
  return dir ? join(dir, 'state.json') : null;
}

/** The identity of every backend of a group, in order. */
function identities(listener: string, group: number, g: GroupEntry): BackendIdentity[] {
  const seen = new Map<string, number>();
  return g.backends.map((b) => {
    const ordinal = seen.get(b.name) ?? 0;
    seen.set(b.name, ordinal + 1);
    return { listener, group, name: b.name, ordinal };
  });
}

const idKey = (name: string, ordinal: number): string => `${name}\u0000${ordinal}`;

/** How the log names a backend: `listener/group/name`, with `#ordinal` for the second of a name and on. */
export function describeIdentity(id: BackendIdentity): string {
  return `${id.listener}/${id.group}/${id.name}${id.ordinal ? `#${id.ordinal}` : ''}`;
}

/**
 * The operator's changes: what `running` has that `config` (the table the file gave) does not, plus the
 * runtime-only `draining` flags (slots of `running`). Empty lists when nothing was changed.
 */
export function operatorState(config: RoutingTable, running: RoutingTable, extra: { draining: readonly BackendKey[] }): OperatorState {
  const drainingSlots = new Set(extra.draining.map((k) => `${k.listener}\u0000${k.group}\u0000${k.index}`));
  const backends: BackendChange[] = [];
  const groups: GroupChange[] = [];
  for (const rl of running.listeners) {
    const cl = config.listeners.find((l) => l.name === rl.name);
    if (!cl) continue;
    rl.groups.forEach((rg, gi) => {
      const cg = cl.groups[gi];
      if (!cg) return;
      if (rg.policy !== cg.policy) groups.push({ listener: rl.name, group: gi, policy: { config: cg.policy, operator: rg.policy } });
      const configIds = identities(rl.name, gi, cg);
      const byId = new Map(configIds.map((id, i) => [idKey(id.name, id.ordinal), cg.backends[i]!]));
      const runningIds = identities(rl.name, gi, rg);
      const kept = new Set<string>();
      runningIds.forEach((id, i) => {
        const rb = rg.backends[i]!;
        const k = idKey(id.name, id.ordinal);
        const cb = byId.get(k);
        const change: BackendChange = { ...id };
        if (drainingSlots.has(`${rl.name}\u0000${gi}\u0000${i}`)) change.draining = true;
        if (!cb) {
          change.created = { host: rb.host, port: rb.port, address: rb.address, maxc: rb.maxc, weight: rb.weight, enabled: rb.enabled, position: i };
          backends.push(change);
          return;
        }
        kept.add(k);
        if (rb.enabled !== cb.enabled) change.enabled = { config: cb.enabled, operator: rb.enabled };
        if (rb.maxc !== cb.maxc) change.maxc = { config: cb.maxc, operator: rb.maxc };
        if (rb.weight !== cb.weight) change.weight = { config: cb.weight, operator: rb.weight };
        if (rb.host !== cb.host || rb.port !== cb.port) {
          change.target = { config: { host: cb.host, port: cb.port }, operator: { host: rb.host, port: rb.port }, address: rb.address };
        }
        if (Object.keys(change).length > 4) backends.push(change);
      });
      configIds.forEach((id, i) => {
        if (kept.has(idKey(id.name, id.ordinal))) return;
        const cb = cg.backends[i]!;
        backends.push({ ...id, deleted: { host: cb.host, port: cb.port } });
      });
    });
  }
  return { version: STATE_VERSION, backends, groups };
}

/** True when the state records nothing (a state file need not be kept). */
export function isEmptyState(state: OperatorState): boolean {
  return state.backends.length === 0 && state.groups.length === 0;
}

/**
 * Re-applies `state` to a freshly compiled table: changes to backends that still exist (and whose config
 * value is still the one the change replaced), deletions, and re-creations. Returns a new frozen table.
 */
export function applyOperatorState(fresh: RoutingTable, state: OperatorState): ApplyResult {
  const applied: string[] = [];
  const skipped: string[] = [];
  // Per listener and group: the working list of backends (entries are replaced, never edited).
  const work = fresh.listeners.map((l) => l.groups.map((g) => ({ policy: g.policy, backends: [...g.backends] })));
  const drainingEntries = new Set<BackendEntry>();
  const locate = (listener: string, group: number) => {
    const li = fresh.listeners.findIndex((l) => l.name === listener);
    const g = li >= 0 ? fresh.listeners[li]!.groups[group] : undefined;
    if (!g) return null;
    const byId = new Map<string, BackendEntry>();
    identities(listener, group, g).forEach((id, i) => byId.set(idKey(id.name, id.ordinal), g.backends[i]!));
    return { entry: g, work: work[li]![group]!, byId };
  };

  for (const gc of state.groups) {
    const where = `${gc.listener}/${gc.group}`;
    const at = locate(gc.listener, gc.group);
    if (!at) skipped.push(`${where}: policy ${gc.policy.operator}: the group is no longer in the config`);
    else if (at.entry.policy !== gc.policy.config) {
      skipped.push(`${where}: policy ${gc.policy.operator}: the config changed it from ${gc.policy.config} to ${at.entry.policy}, which stands`);
    } else {
      at.work.policy = gc.policy.operator;
      applied.push(`${where}: policy ${gc.policy.operator}`);
    }
  }

  // Deletions and changes first, on the config's own backends; creations after, at their old places.
  const creations: { change: BackendChange; at: NonNullable<ReturnType<typeof locate>> }[] = [];
  for (const bc of state.backends) {
    const who = describeIdentity(bc);
    const at = locate(bc.listener, bc.group);
    if (!at) {
      skipped.push(`${who}: the group is no longer in the config`);
      continue;
    }
    if (bc.created) {
      creations.push({ change: bc, at });
      continue;
    }
    const original = at.byId.get(idKey(bc.name, bc.ordinal));
    if (!original) {
      skipped.push(`${who}: no longer in the config`);
      continue;
    }
    const index = at.work.backends.indexOf(original);
    if (bc.deleted) {
      if (original.host !== bc.deleted.host || original.port !== bc.deleted.port) {
        skipped.push(`${who}: delete: the config now points it at ${original.key}, which stands`);
      } else {
        at.work.backends.splice(index, 1);
        applied.push(`${who}: deleted`);
      }
      continue;
    }
    let next: BackendEntry = original;
    const field = <K extends 'enabled' | 'maxc' | 'weight'>(key: K, c: Change<BackendEntry[K]> | undefined): void => {
      if (!c) return;
      if (original[key] !== c.config) {
        skipped.push(`${who}: ${key} ${String(c.operator)}: the config changed it from ${String(c.config)} to ${String(original[key])}, which stands`);
        return;
      }
      next = { ...next, [key]: c.operator };
      applied.push(`${who}: ${key} ${String(c.operator)}`);
    };
    field('enabled', bc.enabled);
    field('maxc', bc.maxc);
    field('weight', bc.weight);
    if (bc.target) {
      const to = formatHostPort(bc.target.operator.host, bc.target.operator.port);
      if (original.host !== bc.target.config.host || original.port !== bc.target.config.port) {
        skipped.push(`${who}: assign ${to}: the config now points it at ${original.key}, which stands`);
      } else {
        const key = formatHostPort(bc.target.operator.host, bc.target.operator.port);
        next = { ...next, host: bc.target.operator.host, port: bc.target.operator.port, address: bc.target.address, key };
        applied.push(`${who}: assigned ${to}`);
      }
    }
    if (next !== original) at.work.backends[index] = next;
    if (bc.draining) {
      drainingEntries.add(next);
      applied.push(`${who}: draining`);
    }
  }

  // In table order, and within a group by position, so each lands where it was among those before it.
  const place = (c: BackendChange): [number, number, number] => [fresh.listeners.findIndex((l) => l.name === c.listener), c.group, c.created!.position];
  const byPlace = (x: [number, number, number], y: [number, number, number]): number => x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
  for (const { change: bc, at } of creations.sort((a, b) => byPlace(place(a.change), place(b.change)))) {
    const who = describeIdentity(bc);
    const c = bc.created!;
    if (at.byId.has(idKey(bc.name, bc.ordinal))) {
      skipped.push(`${who}: create: the config has it now, as configured there`);
      continue;
    }
    const key = formatHostPort(c.host, c.port);
    const entry: BackendEntry = {
      name: bc.name, host: c.host, port: c.port, address: c.address, maxc: c.maxc, weight: c.weight, enabled: c.enabled, key,
      health: at.entry.health, // as `create` does: the group's checks
    };
    at.work.backends.splice(Math.min(c.position, at.work.backends.length), 0, entry);
    applied.push(`${who}: created ${key}${c.enabled ? '' : ' (disabled)'}`);
    if (bc.draining) {
      drainingEntries.add(entry);
      applied.push(`${who}: draining`);
    }
  }

  const table: RoutingTable = {
    ...fresh,
    listeners: fresh.listeners.map((l, li) => ({
      ...l,
      groups: l.groups.map((g, gi) => {
        const w = work[li]![gi]!;
        const same = w.policy === g.policy && w.backends.length === g.backends.length && w.backends.every((b, i) => b === g.backends[i]);
        return same ? g : { ...g, policy: w.policy, backends: w.backends };
      }),
    })),
  };
  const draining: BackendKey[] = [];
  table.listeners.forEach((l) =>
    l.groups.forEach((g, gi) =>
      g.backends.forEach((b, index) => {
        if (drainingEntries.has(b)) draining.push({ listener: l.name, group: gi, index });
      }),
    ),
  );
  return { table: deepFreeze(table), applied, skipped, draining };
}

// --- The document's shape, checked when read back ---------------------------------------------------

class ShapeError extends Error {}

function expectType(value: unknown, type: 'string' | 'number' | 'boolean' | 'object', where: string): void {
  const ok = type === 'object' ? value !== null && typeof value === 'object' && !Array.isArray(value) : typeof value === type;
  if (!ok) throw new ShapeError(`${where} must be ${type === 'object' ? 'an object' : `a ${type}`}`);
  if (type === 'number' && !Number.isInteger(value)) throw new ShapeError(`${where} must be a whole number`);
}

function checkChange(value: unknown, type: 'number' | 'boolean', where: string): void {
  expectType(value, 'object', where);
  const c = value as Record<string, unknown>;
  expectType(c.config, type, `${where}.config`);
  expectType(c.operator, type, `${where}.operator`);
}

function checkTarget(value: unknown, where: string): void {
  expectType(value, 'object', where);
  const t = value as Record<string, unknown>;
  expectType(t.host, 'string', `${where}.host`);
  expectType(t.port, 'number', `${where}.port`);
}

/** Checks a parsed state document; throws LB_STATE_INVALID naming the first problem. */
export function parseOperatorState(value: unknown, source = 'state'): OperatorState {
  try {
    expectType(value, 'object', source);
    const doc = value as Record<string, unknown>;
    if (doc.version !== STATE_VERSION) throw new ShapeError(`version ${JSON.stringify(doc.version)} is not ${STATE_VERSION} (written by another lb?)`);
    if (!Array.isArray(doc.backends)) throw new ShapeError('backends must be an array');
    if (!Array.isArray(doc.groups)) throw new ShapeError('groups must be an array');
    doc.backends.forEach((b: unknown, i) => {
      const at = `backends[${i}]`;
      expectType(b, 'object', at);
      const r = b as Record<string, unknown>;
      expectType(r.listener, 'string', `${at}.listener`);
      expectType(r.group, 'number', `${at}.group`);
      expectType(r.name, 'string', `${at}.name`);
      expectType(r.ordinal, 'number', `${at}.ordinal`);
      if (r.enabled !== undefined) checkChange(r.enabled, 'boolean', `${at}.enabled`);
      if (r.maxc !== undefined) checkChange(r.maxc, 'number', `${at}.maxc`);
      if (r.weight !== undefined) checkChange(r.weight, 'number', `${at}.weight`);
      if (r.draining !== undefined && r.draining !== true) throw new ShapeError(`${at}.draining must be true or absent`);
      if (r.target !== undefined) {
        expectType(r.target, 'object', `${at}.target`);
        const t = r.target as Record<string, unknown>;
        checkTarget(t.config, `${at}.target.config`);
        checkTarget(t.operator, `${at}.target.operator`);
        expectType(t.address, 'string', `${at}.target.address`);
      }
      if (r.deleted !== undefined) checkTarget(r.deleted, `${at}.deleted`);
      if (r.created !== undefined) {
        checkTarget(r.created, `${at}.created`);
        const c = r.created as Record<string, unknown>;
        expectType(c.address, 'string', `${at}.created.address`);
        expectType(c.maxc, 'number', `${at}.created.maxc`);
        expectType(c.weight, 'number', `${at}.created.weight`);
        expectType(c.enabled, 'boolean', `${at}.created.enabled`);
        expectType(c.position, 'number', `${at}.created.position`);
      }
    });
    if (doc.addresses !== undefined) {
      expectType(doc.addresses, 'object', 'addresses');
      for (const [name, address] of Object.entries(doc.addresses as Record<string, unknown>)) expectType(address, 'string', `addresses[${JSON.stringify(name)}]`);
    }
    doc.groups.forEach((g: unknown, i) => {
      const at = `groups[${i}]`;
      expectType(g, 'object', at);
      const r = g as Record<string, unknown>;
      expectType(r.listener, 'string', `${at}.listener`);
      expectType(r.group, 'number', `${at}.group`);
      expectType(r.policy, 'object', `${at}.policy`);
      const p = r.policy as Record<string, unknown>;
      for (const side of ['config', 'operator'] as const) {
        if (!POLICIES.includes(p[side] as Policy)) throw new ShapeError(`${at}.policy.${side} must be one of ${POLICIES.join(', ')}`);
      }
    });
    return doc as unknown as OperatorState;
  } catch (err) {
    if (err instanceof ShapeError) throw new LbError(Code.STATE_INVALID, `${source}: ${err.message}`, Exit.CONFIG);
    throw err;
  }
}

// --- The file ---------------------------------------------------------------------------------------

function errno(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ?? e.message;
}

/**
 * Reads a state file: null when there is none yet (the first start), the document otherwise. Throws
 * LB_STATE_UNREADABLE (cannot read) or LB_STATE_INVALID (not JSON, or not a state document).
 */
export function readStateFile(path: string): OperatorState | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new LbError(Code.STATE_UNREADABLE, `cannot read state file ${path}: ${errno(err)}`, Exit.NOINPUT);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new LbError(Code.STATE_INVALID, `state file ${path} is not JSON: ${(err as Error).message}`, Exit.CONFIG);
  }
  return parseOperatorState(parsed, `state file ${path}`);
}

/**
 * Writes the state so that a reader or a crash sees the old file or the new one, never a mix: a temporary
 * file created with O_EXCL beside the target (never an existing file or a planted symlink), written and
 * fsynced, renamed over the target, then the directory fsynced so the rename itself survives a power cut.
 * The file is mode 0640; a replaced file's owner and group are kept (root can give both back; others can
 * give back the group when they belong to it).
 */
export function writeStateFile(path: string, state: OperatorState): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const text = JSON.stringify(state, null, 2) + '\n';
  let old: Stats | null = null;
  try {
    old = statSync(path);
  } catch {
    // no file yet: the new one is ours
  }
  let fd: number;
  try {
    fd = openSync(tmp, 'wx', 0o640);
  } catch (err) {
    throw new LbError(Code.STATE_WRITE, `cannot write state file ${path}: ${errno(err)} creating a file in ${dir}`, Exit.CANTCREAT);
  }
  try {
    try {
      fchmodSync(fd, 0o640); // the umask may have taken the group's read bit
      if (old && (old.uid !== process.getuid?.() || old.gid !== process.getgid?.())) {
        if (process.getuid?.() === 0) fchownSync(fd, old.uid, old.gid);
        else {
          try {
            fchownSync(fd, -1, old.gid);
          } catch {
            // not a member of the old group: the file keeps ours
          }
        }
      }
      const bytes = Buffer.from(text);
      let done = 0;
      while (done < bytes.length) done += writeSync(fd, bytes, done);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
    throw new LbError(Code.STATE_WRITE, `cannot write state file ${path}: ${errno(err)}`, Exit.CANTCREAT);
  }
  try {
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch (err) {
    // The file is in place; only its durability across a power cut is in doubt. Say so, do not hide it.
    throw new LbError(Code.STATE_WRITE, `state file ${path} written, but syncing ${dir} failed: ${errno(err)}`, Exit.CANTCREAT);
  }
}

/**
 * May `save` write to `path`? Only inside one of `allowedDirs`, never to an arbitrary path a control client
 * names: the path must be absolute, without `..`; its directory, with every symlink resolved, must be one
 * of the allowed directories (also resolved) or below one; the file itself must not be a symlink or a
 * directory. Returns the path to write (directory resolved), or the reason for refusing.
 */
export function saveTargetAllowed(
  path: string,
  allowedDirs: readonly string[],
): { ok: true; path: string } | { ok: false; reason: string } {
  if (!isAbsolute(path)) return { ok: false, reason: `"${path}" is not an absolute path` };
  if (path.split(/[\\/]/).includes('..')) return { ok: false, reason: `"${path}" contains ".."` };
  const base = basename(path);
  if (base === '' || base === '.' || path.endsWith('/')) return { ok: false, reason: `"${path}" names a directory, not a file` };
  let realDir: string;
  try {
    realDir = realpathSync(dirname(path));
  } catch (err) {
    return { ok: false, reason: `directory of "${path}": ${errno(err)}` };
  }
  const roots: string[] = [];
  for (const d of allowedDirs) {
    try {
      roots.push(realpathSync(d));
    } catch {
      // an allowed directory that does not exist allows nothing
    }
  }
  const inside = roots.some((r) => realDir === r || realDir.startsWith(r.endsWith(sep) ? r : r + sep));
  if (!inside) {
    return { ok: false, reason: `"${path}" is outside the directories save may write to (${allowedDirs.join(', ') || 'none'})` };
  }
  const target = join(realDir, base);
  try {
    const st = lstatSync(target);
    if (st.isSymbolicLink()) return { ok: false, reason: `"${path}" is a symbolic link` };
    if (!st.isFile()) return { ok: false, reason: `"${path}" is not a regular file` };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return { ok: false, reason: `"${path}": ${errno(err)}` };
  }
  return { ok: true, path: target };
}
