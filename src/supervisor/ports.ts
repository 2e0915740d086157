// Checking a listen address before the workers bind it.
//
// Workers bind with SO_REUSEPORT, which would also let them share a port with another process of the
// same user (a second lb started by mistake would silently take half the traffic). So the supervisor
// first binds each new address alone, without SO_REUSEPORT: that fails as a plain bind would when
// anyone holds it, and for `port = 0` it picks the port every worker then binds.

import net from 'node:net';
import type { ListenerEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code, Exit, LbError } from '../errors.ts';

/** Binds `entry`'s address exclusively and lets it go; resolves with the address (the port chosen for 0). */
export function probeListen(entry: ListenerEntry): Promise<{ address: string; port: number }> {
  const { host, port } = entry.listen;
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => {
      const exit = err.code === 'EACCES' ? Exit.NOPERM : Exit.UNAVAILABLE;
      reject(new LbError(Code.BIND, `listener ${entry.name}: cannot listen on ${formatHostPort(host, port)}: ${err.code ?? err.message}`, exit));
    });
    server.listen({ host: host ?? undefined, port, exclusive: true }, () => {
      const a = server.address();
      const bound = a && typeof a === 'object' ? { address: a.address, port: a.port } : { address: host ?? '::', port };
      server.close(() => resolve(bound));
    });
  });
}
