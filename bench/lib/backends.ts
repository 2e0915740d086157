// The bench's own backends, run in one helper process of their own (see ipc.ts):
//
// - source: streams data to every client as fast as the client reads (bulk throughput; the load generator
//   is the sink, so throughput is counted where it is received).
// - close:  reads one request, answers, and closes first, as an HTTP server does with `Connection: close`
//   (connection rate). The server closing first also puts the TIME_WAIT sockets on the listening ports
//   instead of using up ephemeral ports.
// - echo:   writes back whatever it reads (request/response latency on persistent connections).
// - hold:   writes one greeting byte per connection and then keeps it idle (memory per idle connection);
//   the greeting tells the client that the whole path, proxy-to-backend included, is up.
//
// Only one kind is under load at a time, so one process is enough. Run as a script it serves requests.

import net, { type Server, type Socket } from 'node:net';
import { serveRequests } from './ipc.ts';

export type BackendKind = 'source' | 'close' | 'echo' | 'hold';
export const BACKEND_KINDS: readonly BackendKind[] = ['source', 'close', 'echo', 'hold'];
export type BackendPorts = Record<BackendKind, number>;

/** What the connection-rate client sends and the `close` backend answers: the shape of a small HTTP/1.0 exchange. */
export const RATE_REQUEST = Buffer.from('GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n');
export const RATE_RESPONSE = Buffer.from(
  'HTTP/1.1 200 OK\r\nServer: lb-bench\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n',
);
/** 256 KiB per write: large enough that the source is never the limit, and reused so it costs no allocation. */
const SOURCE_CHUNK = Buffer.alloc(256 * 1024, 0x61);

function ignoreError(): void {}

function onSourceConnection(sock: Socket): void {
  sock.on('error', ignoreError);
  const pump = (): void => {
    // write() returns false once the 16 KiB high-water mark is passed, i.e. after each chunk; 'drain'
    // brings us back when libuv has handed it all to the kernel.
    while (!sock.destroyed && sock.write(SOURCE_CHUNK));
  };
  sock.on('drain', pump);
  sock.resume(); // the client never sends, but a read is what notices its close
  pump();
}

function onCloseConnection(sock: Socket): void {
  sock.setNoDelay(true);
  sock.on('error', ignoreError);
  // Requests are far below one segment, so the first chunk is the whole request.
  sock.once('data', () => sock.end(RATE_RESPONSE));
}

function onEchoConnection(sock: Socket): void {
  sock.setNoDelay(true);
  sock.on('error', ignoreError);
  sock.on('data', (d) => sock.write(d));
}

let held = 0;
function onHoldConnection(sock: Socket): void {
  held++;
  sock.on('error', ignoreError);
  sock.on('close', () => held--);
  sock.write('h');
  // Reading (nothing ever arrives) lets us see the peer's FIN and free the fd between idle runs.
  sock.resume();
}

const HANDLERS: Record<BackendKind, (s: Socket) => void> = {
  source: onSourceConnection,
  close: onCloseConnection,
  echo: onEchoConnection,
  hold: onHoldConnection,
};

function listen(kind: BackendKind, port: number): Promise<Server> {
  const server = net.createServer({ noDelay: kind !== 'source' }, HANDLERS[kind]);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    // A deep backlog, as for the proxies: the connection-rate test opens thousands of connections a second.
    server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => resolve(server));
  });
}

const servers = new Map<BackendKind, Server>();

async function start(args: { ports: BackendPorts }): Promise<BackendPorts> {
  for (const kind of BACKEND_KINDS) servers.set(kind, await listen(kind, args.ports[kind]));
  return args.ports;
}

if (import.meta.main) {
  serveRequests({
    start,
    held: () => held,
  });
}
