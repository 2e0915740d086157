// The numeric addresses a listener's `host` means, in the order Node's listen() tries them: used where
// lb binds without Node (the supervisor's bind check, the addon's listening sockets), so that both bind
// exactly what a net.Server would.

import { lookup } from 'node:dns/promises';
import net from 'node:net';

/** No host is `::` (dual stack), or 0.0.0.0 when that bind fails for any reason; a name goes through dns.lookup (which may reject). */
export async function listenAddresses(host: string | null): Promise<string[]> {
  if (host === null) return ['::', '0.0.0.0'];
  if (net.isIP(host) !== 0) return [host];
  return [(await lookup(host)).address];
}
