// The control port's command set: balance's names and meanings, plus HAProxy's `show stat`/`show info`.
//
// Every command that works on "the current listener/group" also takes an explicit address, so a script
// never depends on session state: `disable 1` in the current group, or `disable imap 0 1`. There are no
// prefix abbreviations (balance's `r` meant reset, not rr). One table drives dispatch, help, and the
// level check, so a command cannot exist without its help line or its permission.

import { isIP } from 'node:net';
import type { BackendState } from '../balance/state.ts';
import { addBackend, patchBackend, removeBackend, setPolicy, type BackendRef } from '../config/edit.ts';
import { POLICIES, type ListenerEntry, type Policy, type RoutingTable } from '../config/table.ts';
import { docToToml, tableToDoc } from '../config/to-toml.ts';
import { parsePort } from '../config/values.ts';
import { Code, type ErrorCode } from '../errors.ts';
import { levelAllows, type Level } from './access.ts';
import type { FailureRecord } from '../stats/rates.ts';
import { mrtgBackendTitle, renderErrors, renderInfo, renderJson, renderMrtg, renderShow, renderStatCsv } from '../stats/render.ts';
import type { Snapshot } from '../stats/snapshot.ts';

/** What the commands need from the running balancer. */
export interface ControlTarget {
  readonly table: RoutingTable;
  readonly version: string;
  snapshot(): Snapshot;
  backendState(ref: BackendRef): BackendState | undefined;
  /** Swaps in an edited table; `carry` moves a backend's counters to its new slot (assign). */
  applyEdit(table: RoutingTable, carry?: { ref: BackendRef; state: BackendState }): Promise<void>;
  resolveHost(host: string): Promise<string>;
  /** The last connect and check failures, oldest first. */
  recentFailures(): readonly FailureRecord[];
  /** Brings the bytes of open connections up to date in the shared counters (every worker publishes now). */
  refresh(): Promise<void>;
  /** SIGHUP's reload: the file again, all or nothing. */
  reload(): Promise<{ ok: boolean; diagnostics: readonly { message: string }[]; error?: string; generation: number; restarted?: readonly number[] }>;
  /** Runtime state changed without a table change (enable, drain): queued clients may get a slot. */
  stateChanged(): void;
  requestStop(reason: string): void;
  /** Writes the running table to FILE (default: the config file it was started with); returns the path. */
  save(file: string | undefined): string;
}

export interface Session {
  listener: string;
  group: number;
  /** What this session may run (access.ts); the server raises it on `auth` and re-applies it on reload. */
  level: Level;
  prompt: boolean;
  /** Checks a token and raises the session (`auth`); absent where the endpoint takes no token. */
  authenticate?(token: string): Promise<Reply>;
}

export interface Reply {
  text: string;
  error?: ErrorCode;
  close?: boolean;
}

class CommandError extends Error {
  readonly code: ErrorCode;
  constructor(message: string, code: ErrorCode = Code.CONTROL_BAD_ARGS) {
    super(message);
    this.code = code;
  }
}

interface Command {
  readonly usage: string;
  readonly help: string;
  /** The least level a session needs to run it. */
  readonly level: Level;
  run(t: ControlTarget, s: Session, args: string[]): Reply | string | Promise<Reply | string>;
}

const ok = (text: string): Reply => ({ text });

function int(word: string | undefined, what: string): number {
  if (word === undefined || !/^-?\d+$/.test(word)) throw new CommandError(`${what} must be a whole number, not "${word ?? ''}"`);
  return Number(word);
}

function listenerOf(t: ControlTarget, name: string): ListenerEntry {
  const l = t.table.listeners.find((x) => x.name === name);
  if (!l) throw new CommandError(`no such listener "${name}" (listeners: ${t.table.listeners.map((x) => x.name).join(', ')})`);
  return l;
}

function groupOf(t: ControlTarget, listener: string, group: number): void {
  const l = listenerOf(t, listener);
  if (group < 0 || group >= l.groups.length) {
    throw new CommandError(`no such group ${group} in listener ${listener} (groups 0-${l.groups.length - 1})`);
  }
}

/**
 * Splits `[LISTENER GROUP] REST...` by argument count: with `explicit` extra words the address is
 * given, otherwise the session's current listener and group apply.
 */
function addressed(t: ControlTarget, s: Session, args: string[], restCount: number): { listener: string; group: number; rest: string[] } {
  if (args.length === restCount) {
    groupOf(t, s.listener, s.group);
    return { listener: s.listener, group: s.group, rest: args };
  }
  if (args.length === restCount + 2) {
    const group = int(args[1], 'group');
    groupOf(t, args[0]!, group);
    return { listener: args[0]!, group, rest: args.slice(2) };
  }
  throw new CommandError('wrong number of arguments');
}

function backendRef(t: ControlTarget, s: Session, args: string[], restCount: number): { ref: BackendRef; rest: string[] } {
  const { listener, group, rest } = addressed(t, s, args, restCount + 1);
  const index = int(rest[0], 'channel');
  const count = listenerOf(t, listener).groups[group]!.backends.length;
  if (index < 0 || index >= count) throw new CommandError(`no such channel ${index}`);
  return { ref: { listener, group, index }, rest: rest.slice(1) };
}

function entryOf(t: ControlTarget, ref: BackendRef) {
  return listenerOf(t, ref.listener).groups[ref.group]!.backends[ref.index]!;
}

async function hostPort(t: ControlTarget, hostWord: string, portWord: string | undefined): Promise<{ host: string; port: number; address: string }> {
  let host = hostWord;
  let portText = portWord;
  const m = /^\[([^\]]+)\](?::(.+))?$/.exec(hostWord) ?? (isIP(hostWord) === 6 ? null : /^([^:]+):(.+)$/.exec(hostWord));
  if (m) {
    host = m[1]!;
    if (m[2] !== undefined) portText = m[2]; // balance: a :port on the host overrides the port argument
  }
  if (portText === undefined) throw new CommandError('missing port');
  const port = parsePort(portText);
  if (!port.ok) throw new CommandError(port.error);
  let address: string;
  try {
    address = await t.resolveHost(host);
  } catch (err) {
    throw new CommandError(`invalid address "${host}": ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return { host, port: port.value, address };
}

function mrtg(kind: 'bytes' | 'conns') {
  return async (t: ControlTarget, s: Session, args: string[]): Promise<string> => {
    await t.refresh();
    const snap = t.snapshot();
    let listener = s.listener;
    let groupWord: string | undefined;
    let chanWord: string | undefined;
    if (args.length === 1) listener = args[0]!;
    else if (args.length === 2) [groupWord, chanWord] = args;
    else if (args.length === 3) [listener, groupWord, chanWord] = args as [string, string, string];
    else throw new CommandError('wrong number of arguments');
    const l = snap.listeners.find((x) => x.name === listener);
    if (!l) throw new CommandError(`no such listener "${listener}"`);
    if (groupWord === undefined) {
      const name = `lb ${l.name}`;
      return kind === 'bytes'
        ? renderMrtg(l.rcvd, l.sent, snap.uptimeSec, name)
        : renderMrtg(l.total, l.noBackend, snap.uptimeSec, name);
    }
    const g = l.groups[int(groupWord, 'group')];
    if (!g) throw new CommandError(`unknown group ${groupWord}`);
    const b = g.backends[int(chanWord, 'channel')];
    if (!b) throw new CommandError(`unknown channel ${chanWord}`);
    const name = mrtgBackendTitle(l.name, g.index, b.index, b.entry);
    return kind === 'bytes'
      ? renderMrtg(b.rcvd, b.sent, snap.uptimeSec, name)
      : renderMrtg(b.attempts, b.failures, snap.uptimeSec, name); // balance's totalc: the same number as `show`
  };
}

function policyCommand(policy: Policy, text: string): Command['run'] {
  return async (t, s, args) => {
    const { listener, group } = addressed(t, s, args, 0);
    await t.applyEdit(setPolicy(t.table, listener, group, policy));
    return `group ${group} set to ${text}`;
  };
}

export const COMMANDS: Readonly<Record<string, Command>> = {
  help: { usage: 'help', help: 'this list', level: 'read', run: (_t, s) => helpText(s) },
  '?': { usage: '?', help: 'the same as help', level: 'read', run: (_t, s) => helpText(s) },
  auth: {
    usage: 'auth TOKEN',
    help: 'raise this session to control.level with the token of control.token_file',
    level: 'read',
    run(_t, s, args) {
      if (args.length !== 1) throw new CommandError('wrong number of arguments');
      if (!s.authenticate) return { text: 'error: this port takes no token (control.token_file is not set)', error: Code.CONTROL_AUTH };
      return s.authenticate(args[0]!);
    },
  },
  show: {
    usage: 'show [LISTENER | stat | info | json | config | errors]',
    help: 'the channel table (balance), or HAProxy-style CSV, process info, JSON, the running config as TOML, the last failures',
    level: 'read',
    async run(t, s, args) {
      const [what, ...more] = args;
      if (more.length) throw new CommandError('wrong number of arguments');
      if (what !== 'config') await t.refresh();
      if (what === 'stat') return renderStatCsv(t.snapshot());
      if (what === 'info') return renderInfo(t.snapshot());
      if (what === 'errors') return renderErrors(t.recentFailures());
      // Health `send` strings may hold credentials (an IMAP login): shown only above read.
      const secrets = levelAllows(s.level, 'operator');
      if (what === 'json') return secrets ? renderJson(t.snapshot()) : JSON.stringify(hideSecrets(JSON.parse(renderJson(t.snapshot()))), null, 2);
      if (what === 'config') {
        const doc = secrets ? tableToDoc(t.table) : (hideSecrets(tableToDoc(t.table)) as ReturnType<typeof tableToDoc>);
        return docToToml(doc).replace(/\n\n+/g, '\n').trimEnd();
      }
      if (what !== undefined) listenerOf(t, what);
      return renderShow(t.snapshot(), what);
    },
  },
  use: {
    usage: 'use LISTENER',
    help: 'set the current listener (and group 0)',
    level: 'read',
    run(t, s, args) {
      if (args.length !== 1) throw new CommandError('wrong number of arguments');
      listenerOf(t, args[0]!);
      s.listener = args[0]!;
      s.group = 0;
      return `listener ${s.listener} group 0`;
    },
  },
  group: {
    usage: 'group GROUP',
    help: 'set the current group of the current listener',
    level: 'read',
    run(t, s, args) {
      if (args.length !== 1) throw new CommandError('wrong number of arguments');
      const g = int(args[0], 'group');
      groupOf(t, s.listener, g);
      s.group = g;
      return `listener ${s.listener} group ${g}`;
    },
  },
  enable: {
    usage: 'enable [LISTENER GROUP] CHANNEL',
    help: 'enable a channel (also clears autodisable and ejection)',
    level: 'operator',
    async run(t, s, args) {
      const { ref } = backendRef(t, s, args, 0);
      const st = t.backendState(ref);
      const wasDown = st?.operatorEnabled(Date.now()) ?? false;
      t.stateChanged();
      if (entryOf(t, ref).enabled) return wasDown ? `channel ${ref.index} enabled` : `channel ${ref.index} already enabled`;
      await t.applyEdit(patchBackend(t.table, ref, { enabled: true }));
      return `channel ${ref.index} enabled`;
    },
  },
  disable: {
    usage: 'disable [LISTENER GROUP] CHANNEL',
    help: 'disable a channel (DIS): no new connections, running ones go on',
    level: 'operator',
    async run(t, s, args) {
      const { ref } = backendRef(t, s, args, 0);
      if (!entryOf(t, ref).enabled) return `channel ${ref.index} already disabled`;
      await t.applyEdit(patchBackend(t.table, ref, { enabled: false }));
      return `channel ${ref.index} disabled`;
    },
  },
  maxc: {
    usage: 'maxc [LISTENER GROUP] CHANNEL MAXC',
    help: 'set the maximum connections of a channel (0 = unlimited)',
    level: 'operator',
    async run(t, s, args) {
      const { ref, rest } = backendRef(t, s, args, 1);
      const maxc = int(rest[0], 'maxc');
      if (maxc < 0) throw new CommandError('maxc must be >= 0');
      await t.applyEdit(patchBackend(t.table, ref, { maxc }));
      return `maxc of channel ${ref.index} changed to ${maxc}`;
    },
  },
  reset: {
    usage: 'reset [LISTENER GROUP] CHANNEL',
    help: 'zero the counters of a channel (totalc, sent, rcvd, fail)',
    level: 'operator',
    run(t, s, args) {
      const { ref } = backendRef(t, s, args, 0);
      t.backendState(ref)?.resetCounters();
      return `channel ${ref.index} counters reset`;
    },
  },
  create: {
    usage: 'create [LISTENER GROUP] HOST PORT',
    help: 'add a channel to a group; it starts disabled until enabled',
    level: 'admin',
    async run(t, s, args) {
      const { listener, group, rest } =
        args.length === 1 || args.length === 3 ? addressed(t, s, args, 1) : addressed(t, s, args, 2);
      const hp = await hostPort(t, rest[0]!, rest[1]);
      const health = listenerOf(t, listener).groups[group]!.health;
      await t.applyEdit(addBackend(t.table, listener, group, { ...hp, maxc: 0, weight: 1, enabled: false, health }));
      const index = listenerOf(t, listener).groups[group]!.backends.length - 1;
      return `channel ${index} created`;
    },
  },
  assign: {
    usage: 'assign [LISTENER GROUP] CHANNEL HOST PORT',
    help: 're-point a disabled channel to another address',
    level: 'admin',
    async run(t, s, args) {
      const { ref, rest } = backendRef(t, s, args, 2);
      if (entryOf(t, ref).enabled) throw new CommandError('channel must be disabled to assign new address');
      const hp = await hostPort(t, rest[0]!, rest[1]);
      const state = t.backendState(ref);
      await t.applyEdit(patchBackend(t.table, ref, hp), state ? { ref, state } : undefined);
      return `channel ${ref.index} reassigned`;
    },
  },
  delete: {
    usage: 'delete [LISTENER GROUP] CHANNEL [force]',
    help: 'remove a channel; refused while it has connections unless "force" (they go on)',
    level: 'admin',
    async run(t, s, args) {
      const force = args.at(-1) === 'force';
      const { ref } = backendRef(t, s, force ? args.slice(0, -1) : args, 0);
      const cur = t.backendState(ref)?.cur ?? 0;
      if (cur > 0 && !force) throw new CommandError(`channel ${ref.index} has ${cur} connection(s); drain it first or add "force"`);
      await t.applyEdit(removeBackend(t.table, ref));
      return `channel ${ref.index} deleted` + (cur > 0 ? ` (${cur} connection(s) go on)` : '');
    },
  },
  drain: {
    usage: 'drain [LISTENER GROUP] CHANNEL',
    help: 'no new connections to a channel; running ones go on (a log line says when the last ended)',
    level: 'operator',
    run(t, s, args) {
      const { ref } = backendRef(t, s, args, 0);
      const st = t.backendState(ref);
      if (!st) throw new CommandError(`no such channel ${ref.index}`);
      st.setDraining(true, Date.now());
      t.stateChanged();
      return st.cur === 0 ? `channel ${ref.index} drained (no connections)` : `channel ${ref.index} draining, ${st.cur} connection(s) left`;
    },
  },
  save: {
    usage: 'save [FILE]',
    help: 'write the running configuration as TOML (atomically; the old file is kept as FILE.bak)',
    level: 'admin',
    run(t, _s, args) {
      if (args.length > 1) throw new CommandError('wrong number of arguments');
      return `saved to ${t.save(args[0])}`;
    },
  },
  hash: { usage: 'hash [LISTENER GROUP]', help: 'the group chooses by client IP hash', level: 'admin', run: policyCommand('hash', 'hash') },
  rr: { usage: 'rr [LISTENER GROUP]', help: 'the group chooses round robin', level: 'admin', run: policyCommand('rr', 'round robin') },
  policy: {
    usage: 'policy [LISTENER GROUP] POLICY',
    help: `set the group's policy: ${POLICIES.join(', ')}`,
    level: 'admin',
    async run(t, s, args) {
      const { listener, group, rest } = addressed(t, s, args, 1);
      const policy = rest[0] as Policy;
      if (!POLICIES.includes(policy)) throw new CommandError(`policy must be one of ${POLICIES.join(', ')}`);
      await t.applyEdit(setPolicy(t.table, listener, group, policy));
      return `group ${group} set to ${policy}`;
    },
  },
  'mrtg-bytes': {
    usage: 'mrtg-bytes [LISTENER] [GROUP CHANNEL]',
    help: 'MRTG: bytes backend->client, bytes client->backend, uptime, name',
    level: 'read',
    run: mrtg('bytes'),
  },
  'mrtg-conns': {
    usage: 'mrtg-conns [LISTENER] [GROUP CHANNEL]',
    help: 'MRTG: total connections, failed connects (no-backend for a listener), uptime, name',
    level: 'read',
    run: mrtg('conns'),
  },
  version: { usage: 'version', help: 'the lb version', level: 'read', run: (t) => `  This is lb ${t.version}\n  Node ${process.version}` },
  prompt: {
    usage: 'prompt',
    help: 'toggle the "lb> " prompt (on for Telnet clients, off for scripts)',
    level: 'read',
    run(_t, s) {
      s.prompt = !s.prompt;
      return `prompt ${s.prompt ? 'on' : 'off'}`;
    },
  },
  quit: { usage: 'quit', help: 'close this session', level: 'read', run: () => ({ text: '', close: true }) },
  reload: {
    usage: 'reload',
    help: 're-read the config file (like SIGHUP); a broken file changes nothing',
    level: 'admin',
    async run(t) {
      const r = await t.reload();
      if (r.ok) {
        const restarted = r.restarted?.length ? ` (worker ${r.restarted.join(', ')} died during it and was restarted on it)` : '';
        return `reloaded: generation ${r.generation} in force in every worker${restarted}`;
      }
      const why = r.error ?? r.diagnostics.map((d) => d.message).join('; ');
      throw new CommandError(`reload failed, the running configuration (generation ${r.generation}) is unchanged: ${why}`, Code.RELOAD_FAILED);
    },
  },
  kill: {
    usage: 'kill',
    help: 'stop lb gracefully (like SIGTERM: drain, then exit)',
    level: 'admin',
    run(t) {
      t.requestStop('kill command');
      return { text: 'shutting down', close: true };
    },
  },
};

function helpText(s: Session): string {
  const names = Object.keys(COMMANDS).filter((n) => n !== '?');
  const width = Math.max(...names.map((n) => COMMANDS[n]!.usage.length));
  const lines = names.map((n) => {
    const c = COMMANDS[n]!;
    return `  ${c.usage.padEnd(width)}  ${c.help}${c.level === 'read' ? '' : ` (${c.level})`}`;
  });
  return [`available commands (this session: ${s.level}):`, ...lines].join('\n');
}

/** What replaces a secret for a read-level session. */
export const HIDDEN = '<hidden>';

/**
 * A copy of a JSON-like value with secrets replaced by HIDDEN: every `send` of a `health` table (config
 * document or snapshot) and the token file's path. Shape-agnostic, so it follows the table as it grows.
 */
export function hideSecrets(value: unknown, key = '', depth = 0): unknown {
  if (depth > 64 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => hideSecrets(v, '', depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (key === 'health' && k === 'send' && typeof v === 'string') out[k] = HIDDEN;
    else if ((k === 'token_file' || k === 'tokenFile') && typeof v === 'string') out[k] = HIDDEN;
    else out[k] = hideSecrets(v, k, depth + 1);
  }
  return out;
}

/** Printable for an error message: control and non-ASCII bytes shown as `?`, long input cut. */
function sanitize(word: string, max = 40): string {
  const clean = word.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > max ? `${clean.slice(0, max)}...` : clean;
}

/** Runs one command line. Never throws: every problem becomes an `error:` reply and the session goes on. */
export async function execute(t: ControlTarget, s: Session, line: string): Promise<Reply> {
  const words = line.trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) return ok('');
  const [name, ...args] = words as [string, ...string[]];
  const cmd = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!cmd) {
    return { text: `error: unknown command "${sanitize(name)}" (try "help")`, error: Code.CONTROL_UNKNOWN_COMMAND };
  }
  if (!levelAllows(s.level, cmd.level)) {
    return {
      text: `error: "${name}" needs level ${cmd.level}, this session has ${s.level} (control.level with "auth TOKEN" on TCP, control.socket_level on the socket)`,
      error: Code.CONTROL_NOT_ADMIN,
    };
  }
  try {
    const result = await cmd.run(t, s, args);
    return typeof result === 'string' ? ok(result) : result;
  } catch (err) {
    // Messages may quote what the client typed: never echo control bytes or kilobytes back to a terminal.
    const message = sanitize((err as Error).message, 300);
    // The usage helps with a mistyped command, not with one that ran and failed (a refused reload).
    if (err instanceof CommandError) return { text: err.code === Code.CONTROL_BAD_ARGS ? `error: ${message}; usage: ${cmd.usage}` : `error: ${message}`, error: err.code };
    return { text: `error: ${message}`, error: Code.CONTROL_BAD_ARGS };
  }
}
