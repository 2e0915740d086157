// A bare splice relay for measurements: accept (paused), connect, hand both sockets to spliceRelay.
// Nothing of lb around it, so that the figures are the data path's alone. Used as an anchors.sh proxy:
//
//   ../shared/bench/anchors.sh --metrics tput --only node-pipe,haproxy-1t \
//     --proxy 'splice=node /work/main/native/bench-relay.ts {listen_port} {backend_port}'
//
// LB_SPLICE_PIPE_BYTES sets the pipe size (0 = kernel default), LB_SPLICE_POOL_MAX the pool size.
// On SIGTERM/SIGINT it prints the pool figures to stderr and exits.

import net from 'node:net';
import { spliceAvailable, spliceRelay, spliceStats } from '../src/proxy/splice.ts';

const [listenPort, backendPort, backendHost = '127.0.0.1'] = process.argv.slice(2);
if (!listenPort || !backendPort) {
  console.error('usage: bench-relay.ts LISTEN_PORT BACKEND_PORT [BACKEND_HOST]');
  process.exit(64);
}
const available = spliceAvailable();
if (!available.ok) {
  console.error(`bench-relay: ${available.reason}`);
  process.exit(69);
}

const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (client) => {
  client.on('error', () => undefined);
  const backend = net.connect({ host: backendHost, port: Number(backendPort), allowHalfOpen: true, noDelay: true });
  backend.pause();
  backend.on('error', () => client.destroy());
  backend.once('connect', () => spliceRelay(client, backend, { idleTimeoutMs: 0 }, () => undefined));
});
server.listen(Number(listenPort), '127.0.0.1');

for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, () => {
    console.error(`bench-relay: ${JSON.stringify({ ...spliceStats(), cpu: process.cpuUsage() })}`);
    process.exit(0);
  });
}
