// The naive Node proxy the targets are measured against (the `node-pipe` row): the same code as
// the shared anchors' node-pipe-baseline.mjs, so this suite can check "lb ≥ 1.3× node-pipe" on its own.
// net.createServer → net.connect → pipe() both ways, half-close kept (allowHalfOpen), errors tear both
// sides down. Nothing else: no pooling, no timeouts, no buffer tuning.
//
// usage: node naive-proxy.ts LISTEN_PORT BACKEND_PORT

import net from 'node:net';

const [listenPort, backendPort] = process.argv.slice(2).map(Number);
if (!listenPort || !backendPort) {
  console.error('usage: naive-proxy.ts LISTEN_PORT BACKEND_PORT');
  process.exit(2);
}

const server = net.createServer({ allowHalfOpen: true }, (client) => {
  const upstream = net.connect({ host: '127.0.0.1', port: backendPort, allowHalfOpen: true });
  const destroyBoth = (): void => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', destroyBoth);
  upstream.on('error', destroyBoth);
  client.pipe(upstream);
  upstream.pipe(client);
});

server.on('error', (err) => {
  console.error(`naive-proxy: ${err.message}`);
  process.exit(1);
});
server.listen(listenPort, '127.0.0.1');

for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => process.exit(0));
