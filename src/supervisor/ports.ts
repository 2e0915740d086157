// Checking a listen address before the workers bind it.
//
// Workers bind with SO_REUSEPORT, which would also let them share a port with another process of the
// same user (a second lb started by mistake would silently take half the traffic). So the supervisor
// first binds each new address alone, without SO_REUSEPORT: that fails as a plain bind would when
// anyone holds it, and for `port = 0` it picks the port every worker then binds.
//
// That socket must never listen. One that listens, however briefly, takes clients into its backlog and
// resets them when it closes, and refuses those that come after it until the workers listen: a client
// retrying from before lb started would be answered, reset, then refused. Node cannot bind without
// listening, so the addon does it (`bindCheck` in native/lb_splice.c): clients are refused until the
// first worker listens, then served. Without the addon the old probe (listen, then close) still checks
// the address, and `show info` and a start-up warning say that the port may flicker.

import net from 'node:net';
import { loadAddon, errnoName } from '../addon.ts';
import type { ListenerEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code, Exit, LbError } from '../errors.ts';
import { listenAddresses } from '../proxy/listen-address.ts';

export interface BoundAddress {
  readonly address: string;
  readonly port: number;
}

/** How new listen addresses are checked: bound without listening, or (no addon) listened on and closed. */
export type PortCheck = { readonly method: 'bind' } | { readonly method: 'listen'; readonly reason: string };

type BindCheck = (address: string, port: number, v6only: boolean) => number;

function bindCheckFn(): BindCheck | { reason: string } {
  const addon = loadAddon();
  if (!addon.ok) return { reason: addon.reason };
  const fn = addon.exports['bindCheck'];
  return typeof fn === 'function' ? (fn as BindCheck) : { reason: 'the addon is older than this lb (no bindCheck): rebuild it with npm run build:native' };
}

/** The method this process uses, for `show info` and the start-up warning. */
export function portCheck(): PortCheck {
  const fn = bindCheckFn();
  return typeof fn === 'function' ? { method: 'bind' } : { method: 'listen', reason: fn.reason };
}

/** One line for `show info`. */
export function describePortCheck(check: PortCheck): string {
  return check.method === 'bind' ? 'bind (never listens)' : `listen probe (${check.reason}): a client may be reset at start-up`;
}

function bindError(entry: ListenerEntry, code: string): LbError {
  const { host, port } = entry.listen;
  const exit = code === 'EACCES' ? Exit.NOPERM : Exit.UNAVAILABLE;
  return new LbError(Code.BIND, `listener ${entry.name}: cannot listen on ${formatHostPort(host, port)}: ${code}`, exit);
}

/**
 * Checks that `entry`'s address can be bound alone and lets it go; resolves with the address (and the
 * port the kernel chose for 0). Rejects with LB_BIND as the workers' own bind would.
 */
export async function checkListen(entry: ListenerEntry): Promise<BoundAddress> {
  const fn = bindCheckFn();
  if (typeof fn !== 'function') return listenProbe(entry);
  const { host, port } = entry.listen;
  let candidates: string[];
  try {
    candidates = await listenAddresses(host);
  } catch (err) {
    throw bindError(entry, (err as NodeJS.ErrnoException).code ?? (err as Error).message);
  }
  let result = 0;
  for (const address of candidates) {
    result = fn(address, port, false);
    if (result >= 0) return { address, port: result };
  }
  const code = errnoName(-result) ?? 'EINVAL';
  // EINVAL: an address the addon does not take (an IPv6 scope id): the listen probe handles it.
  if (code === 'EINVAL') return listenProbe(entry);
  throw bindError(entry, code);
}

/** Without the addon: listens on `entry`'s address (exclusively) and closes it. A client may see that. */
function listenProbe(entry: ListenerEntry): Promise<BoundAddress> {
  const { host, port } = entry.listen;
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => reject(bindError(entry, err.code ?? err.message)));
    server.listen({ host: host ?? undefined, port, exclusive: true }, () => {
      const a = server.address();
      const bound = a && typeof a === 'object' ? { address: a.address, port: a.port } : { address: host ?? '::', port };
      server.close(() => resolve(bound));
    });
  });
}
