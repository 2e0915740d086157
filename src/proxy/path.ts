// Which path a listener's connections take, said once for `show info` (one line per listener): the
// fastest is the addon connecting to the backend and splicing; each step down names its reason. Later
// steps of the native path change the values, not the line.

import { sendProxyOf, type ListenerEntry } from '../config/table.ts';

export type Availability = { readonly ok: true } | { readonly ok: false; readonly reason: string };

export interface PathInputs {
  /** `[global] splice`. */
  readonly splice: 'auto' | 'off';
  /** Whether the workers can splice (the addon loaded and the kernel splices). */
  readonly spliceOk: Availability;
  /** Whether the workers connect natively on the splice path. */
  readonly nativeConnectOk: Availability;
}

/** The path of `entry`'s connections, e.g. `native connect + splice; JS connect for queued clients`. */
export function listenerPath(entry: ListenerEntry, env: PathInputs): string {
  if (env.splice === 'off') return 'JS connect + JS relay (splice = "off")';
  if (entry.packetDump !== 'off') return 'JS connect + JS relay (packet_dump)';
  if (!env.spliceOk.ok) return `JS connect + JS relay (${env.spliceOk.reason})`;
  if (!env.nativeConnectOk.ok) return `JS connect + splice (${env.nativeConnectOk.reason})`;
  const js: string[] = [];
  if (entry.groups.some((g) => g.backends.some((b) => sendProxyOf(g, b) !== null))) js.push('send_proxy backends');
  if (entry.queue) js.push('queued clients');
  if (entry.acceptProxy) js.push('clients whose first bytes came with the PROXY header');
  return js.length === 0 ? 'native connect + splice' : `native connect + splice; JS connect for ${js.join(', ')}`;
}
