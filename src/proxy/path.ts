// Which path a listener's connections take, said once for `show info` (one line per listener): the
// fastest is the addon accepting, connecting to the backend and splicing; each step down names its
// reason. Later steps of the native path change the values, not the line.

import { isIP } from 'node:net';
import { sendProxyOf, type ListenerEntry } from '../config/table.ts';

export type Availability = { readonly ok: true } | { readonly ok: false; readonly reason: string };

export interface PathInputs {
  /** `[global] splice`. */
  readonly splice: 'auto' | 'off';
  /** Whether the workers can splice (the addon loaded and the kernel splices). */
  readonly spliceOk: Availability;
  /** Whether the workers connect natively on the splice path. */
  readonly nativeConnectOk: Availability;
  /** Whether the workers' addon can accept (listening sockets of its own). */
  readonly nativeAcceptOk: Availability;
}

/** The reason a backend given by a name that is not resolved in the table (each connect resolves it) gives. */
export const NAME_REASON = 'a backend address that is not an IP literal';

/** What of `entry` still needs a client net.Socket (Node accepting), or null: the addon may accept. */
export function jsAcceptReason(entry: ListenerEntry): string | null {
  if (entry.packetDump !== 'off') return 'packet_dump';
  if (entry.groups.some((g) => g.backends.some((b) => isIP(b.address) === 0 && b.resolveError === undefined))) return NAME_REASON;
  return null;
}

/** Whether the addon accepts `entry`'s clients, given this worker's splice setting and addon. */
export function acceptsNatively(entry: ListenerEntry, splice: 'auto' | 'off', nativeAcceptOk: Availability): boolean {
  return splice === 'auto' && nativeAcceptOk.ok && jsAcceptReason(entry) === null;
}

/** The path of `entry`'s connections, e.g. `native accept + connect + splice`. */
export function listenerPath(entry: ListenerEntry, env: PathInputs): string {
  if (env.splice === 'off') return 'JS connect + JS relay (splice = "off")';
  if (entry.packetDump !== 'off') return 'JS connect + JS relay (packet_dump)';
  if (!env.spliceOk.ok) return `JS connect + JS relay (${env.spliceOk.reason})`;
  if (!env.nativeConnectOk.ok) return `JS connect + splice (${env.nativeConnectOk.reason})`;
  const why = env.nativeAcceptOk.ok ? jsAcceptReason(entry) : env.nativeAcceptOk.reason;
  if (why === null) return 'native accept + connect + splice';
  const js: string[] = [];
  if (entry.groups.some((g) => g.backends.some((b) => sendProxyOf(g, b) !== null))) js.push('send_proxy backends');
  if (entry.queue) js.push('queued clients');
  if (entry.acceptProxy) js.push('clients whose first bytes came with the PROXY header');
  const connect = js.length === 0 ? 'native connect + splice' : `native connect + splice; JS connect for ${js.join(', ')}`;
  return `JS accept (${why}) + ${connect}`;
}
