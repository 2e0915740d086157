// balance's command line, `lb [-b addr] [-B addr] [-t sec] [-T sec] [-adfpH6] PORT CHANNEL... [!|%] CHANNEL...`,
// turned into the same config document a TOML file gives, so it is validated by the same schema and
// compiled by the same code (no second code path).

import { parseArgs } from 'node:util';
import type { ConfigDoc, GroupDoc } from '../config/doc.ts';
import type { PathSegment } from '../config/locate.ts';
import { isIP } from 'node:net';
import { optionErrorMessage } from './usage.ts';

export const BALANCE_OPTIONS = {
  b: { type: 'string' },
  B: { type: 'string' },
  t: { type: 'string' },
  T: { type: 'string' },
  a: { type: 'boolean' },
  d: { type: 'boolean' },
  f: { type: 'boolean' },
  p: { type: 'boolean' },
  H: { type: 'boolean' },
  M: { type: 'boolean' },
  '6': { type: 'boolean' },
  c: { type: 'string' },
  i: { type: 'boolean' },
} as const;

export interface BalanceCommandLine {
  doc: ConfigDoc;
  /** The operand a config path came from, so errors name what the user typed. */
  operandAt(path: readonly PathSegment[]): string | null;
  port: string;
  bind: string | undefined;
  debug: boolean;
}

export class BalanceArgsError extends Error {}

function seconds(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new BalanceArgsError(`-${flag} takes whole seconds >= 1, not "${text}"`);
  return Number(text);
}

function parse(argv: readonly string[]) {
  try {
    return parseArgs({ args: [...argv], options: BALANCE_OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    const message = optionErrorMessage(err);
    if (message === null) throw err;
    // An unknown option here is most often a typo of balance's: list them (lb's own commands are in --help).
    const known = "balance's options: -b -B -t -T -a -d -f -p -H -M -6 -c -i";
    throw new BalanceArgsError(message.startsWith('unknown option') ? `${message} (${known})` : message);
  }
}

/**
 * balance's shell forms, `-c "CMD" PORT` and `-i PORT`: null when argv starts a balancer instead.
 * Unlike balance, the command may also be given as several words (`-c mrtg-bytes 0 0 PORT` was a usage
 * error there); the port is the last word.
 */
export function parseBalanceControl(argv: readonly string[]): { port: string; bind?: string; command?: string } | null {
  const { values: v, positionals } = parse(argv);
  if (v.c === undefined && !v.i) return null;
  const port = positionals.at(-1);
  if (port === undefined) throw new BalanceArgsError(`${v.i ? '-i' : '-c'} needs the PORT of the instance`);
  if (v.i) {
    if (positionals.length !== 1) throw new BalanceArgsError('-i takes only PORT');
    return { port, bind: v.b };
  }
  return { port, bind: v.b, command: [v.c!, ...positionals.slice(0, -1)].join(' ') };
}

export function parseBalanceArgs(argv: readonly string[]): BalanceCommandLine {
  const { values: v, positionals } = parse(argv);
  const [port, ...operands] = positionals;
  if (port === undefined) throw new BalanceArgsError('missing PORT');
  if (!/^[A-Za-z0-9_-]+$/.test(port)) throw new BalanceArgsError(`invalid port "${port}"`);

  const groups: GroupDoc[] = [];
  const origin: string[][] = [];
  let current: string[] = [];
  for (const op of operands) {
    if (op === '!' || op === '%') {
      if (current.length === 0) throw new BalanceArgsError(`"${op}" with no channel before it: no channels in group ${groups.length}`);
      groups.push({ policy: op === '%' ? 'hash' : 'rr', backends: current });
      origin.push(current);
      current = [];
    } else {
      current.push(op);
    }
  }
  if (current.length) {
    groups.push({ policy: 'rr', backends: current });
    origin.push(current);
  }
  if (groups.length === 0) throw new BalanceArgsError('no channels given (balance would accept clients and close them)');

  let listen: string | number = port;
  if (v.b !== undefined) listen = isIP(v.b) === 6 ? `[${v.b}]:${port}` : `${v.b}:${port}`;
  else if (/^\d+$/.test(port)) listen = Number(port);

  const connectTimeout = seconds('t', v.t);
  const idleTimeout = seconds('T', v.T);
  const doc: ConfigDoc = {
    listeners: {
      [port]: {
        listen,
        ...(v.B !== undefined ? { source: v.B } : {}),
        ...(connectTimeout !== undefined ? { connect_timeout: connectTimeout } : {}),
        ...(idleTimeout !== undefined ? { idle_timeout: idleTimeout } : {}),
        ...(v.H ? { hash_failover: true } : {}),
        ...(v.a ? { autodisable: true } : {}),
        ...(v.p ? { packet_dump: 'balance' } : {}),
        groups,
      },
    },
  };
  return {
    doc,
    port,
    bind: v.b,
    debug: v.d ?? false,
    operandAt(path) {
      const [root, , groups, g, sub, i] = path; // listeners.PORT.groups[g].backends[i]
      if (groups !== 'groups') return null;
      if (root !== 'listeners' || sub !== 'backends' || typeof g !== 'number' || typeof i !== 'number') return null;
      return origin[g]?.[i] ?? null;
    },
  };
}
