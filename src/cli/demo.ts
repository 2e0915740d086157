// `lb demo`: a complete balancer on loopback with its own backends, so a newcomer sees balancing at once.

import net, { type Server } from 'node:net';
import type { ConfigDoc } from '../config/doc.ts';
import { balanceSocketPath } from '../control/client.ts';

export interface DemoBackends {
  ports: number[];
  close(): Promise<void>;
}

/** Banner + echo servers: each greets with its name, so `nc` shows which backend answered. */
export async function startDemoBackends(count: number): Promise<DemoBackends> {
  const servers: Server[] = [];
  const ports: number[] = [];
  for (let i = 1; i <= count; i++) {
    const name = `backend-${i}`;
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      socket.on('error', () => socket.destroy());
      socket.write(`hello from ${name}\n`);
      socket.on('data', (d) => socket.write(`${name}: ${d.toString('utf8')}`));
      socket.on('end', () => socket.end());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    servers.push(server);
    ports.push((server.address() as net.AddressInfo).port);
  }
  return {
    ports,
    close: () => Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r())))).then(() => undefined),
  };
}

export function demoConfig(listenPort: number, controlPort: number, backendPorts: number[]): ConfigDoc {
  // Named as each one greets, so `show` and the logs say the same name the client sees.
  const named = (port: number, i: number) => ({ name: `backend-${i + 1}`, host: '127.0.0.1', port });
  const [first, ...rest] = backendPorts.map(named);
  return {
    global: { drain_timeout: '2s' },
    // TCP stays read-only (no token in a demo); the Unix socket, private to this user, may change state.
    control: { listen: `127.0.0.1:${controlPort}`, socket: balanceSocketPath(`demo-${process.pid}`, undefined) },
    listeners: {
      demo: {
        listen: `127.0.0.1:${listenPort}`,
        connect_timeout: '1s',
        groups: [
          { policy: 'rr', backends: rest },
          { policy: 'rr', backends: [first!] },
        ],
      },
    },
  };
}

export function demoHelp(listen: string, control: string, socket: string): string {
  // From a checkout the command is an npm script (npx would look for an `lb` package in the registry).
  const lb = process.env.npm_lifecycle_event ? 'npm run -s lb --' : 'lb';
  return `
lb demo: listener "demo" on ${listen} balances round robin over backend-2 and backend-3;
backend-1 is the failover group, used when both are disabled or down. Try, in another terminal:

  nc ${listen.replace(':', ' ')}                     # each connection greets from the next backend
  echo show | nc -N ${control.replace(':', ' ')}     # the channel table; telnet ${control.replace(':', ' ')} works too
  ${lb} ctl --socket ${socket} disable demo 0 0   # take backend-2 out, then nc again
  ${lb} ctl --control ${control} mrtg-bytes demo 0 1

Ctrl-C stops the demo.
`;
}
