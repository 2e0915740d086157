// The PROXY protocol against real peers (Debian's haproxy and nginx, installed by .ci/run): haproxy with
// send-proxy / send-proxy-v2 in front of lb's accept_proxy, and nginx's stream module with
// `listen ... proxy_protocol` behind lb's send_proxy, reporting $proxy_protocol_addr. Clients connect
// from several loopback addresses (127.0.0.2, 127.0.0.3), so the address each hop reports is the client's.

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net, { type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HOST, freePort, track, until, within } from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';
import { ProxyHeaderParser } from '../../src/proxy/proxy-protocol.ts';

afterEach(cleanup);

const STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/** Starts a daemon in the foreground and resolves once `port` accepts; it is killed after the test. */
async function daemon(name: string, cmd: string, args: string[], port: number, dir: string): Promise<ChildProcess> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = once(proc, 'exit');
  track({
    close: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await within(exited, 5000, `${name} to exit`);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  });
  const accepts = async (): Promise<boolean> => {
    const s = net.connect({ host: HOST, port });
    try {
      await within(once(s, 'connect'), 500, 'probe');
      return true;
    } catch {
      return false;
    } finally {
      s.destroy();
    }
  };
  // A generous bound on start-up (a loaded machine can take seconds to start a daemon), polled every 50 ms.
  const end = Date.now() + 15_000;
  for (let i = 0; i < 300 && !(await accepts()); i++) {
    if (proc.exitCode !== null) throw new Error(`${name} exited (${proc.exitCode}):\n${output}`);
    if (Date.now() > end) throw new Error(`${name} did not listen on ${port} within 15 s:\n${output}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return proc;
}

/** nginx's stream module with a PROXY-protocol listener that answers (and logs) the address it was given. */
async function nginxProxyProtocol(): Promise<{ port: number; log: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'lb-nginx-'));
  const port = await freePort();
  const log = path.join(dir, 'access.log');
  writeFileSync(
    path.join(dir, 'nginx.conf'),
    `load_module ${STREAM_MODULE};
daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
stream {
  log_format pp '$proxy_protocol_addr $proxy_protocol_port $remote_addr';
  access_log ${log} pp;
  server {
    listen 127.0.0.1:${port} proxy_protocol;
    return "$proxy_protocol_addr $proxy_protocol_port\\n";
  }
}
`,
  );
  await daemon('nginx', '/usr/sbin/nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', 'stderr'], port, dir);
  return { port, log };
}

/** haproxy in TCP mode in front of `target`, sending a PROXY header of the given kind to it. */
async function haproxyInFront(target: number, send: 'send-proxy' | 'send-proxy-v2'): Promise<number> {
  const dir = mkdtempSync(path.join(tmpdir(), 'lb-haproxy-'));
  const port = await freePort();
  const cfg = path.join(dir, 'haproxy.cfg');
  writeFileSync(
    cfg,
    `global
  maxconn 64
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend fe
  bind 127.0.0.1:${port}
  default_backend be
backend be
  server lb 127.0.0.1:${target} ${send}
`,
  );
  await daemon('haproxy', '/usr/sbin/haproxy', ['-db', '-f', cfg], port, dir);
  return port;
}

/**
 * Connects from `from`, sends `data` and half-closes, and resolves with what came back and the local port.
 * With `data` null it sends nothing and half-closes only after the reply ended: haproxy (2.6, seen on
 * loopback captures) answers a client that closes before sending anything by resetting its server side,
 * sometimes before the server's reply is through, so such a client would test haproxy's timing, not lb.
 */
async function exchange(port: number, from: string, data: string | null): Promise<{ reply: string; localPort: number }> {
  const socket: Socket = net.connect({ host: HOST, port, localAddress: from, allowHalfOpen: true });
  track({ close: async () => void socket.destroy() });
  await within(once(socket, 'connect'), 3000, `a connect from ${from}`);
  const localPort = socket.localPort!;
  let reply = '';
  socket.on('data', (d: Buffer) => (reply += d.toString()));
  const ended = within(once(socket, 'end'), 10_000, `the reply to ${from}`);
  if (data !== null) socket.end(data);
  await ended;
  socket.destroy();
  return { reply, localPort };
}

/** A backend that records the bytes of each connection and closes when the client does. */
async function recorder(): Promise<{ port: number; seen: Buffer[] }> {
  const seen: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    const i = seen.push(Buffer.alloc(0)) - 1;
    s.on('data', (d: Buffer) => (seen[i] = Buffer.concat([seen[i]!, d])));
    s.on('end', () => s.end());
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, HOST);
  await within(once(server, 'listening'), 3000, 'the recorder to listen');
  track({
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  });
  return { port: (server.address() as AddressInfo).port, seen };
}

describe('accept_proxy behind haproxy', () => {
  for (const send of ['send-proxy', 'send-proxy-v2'] as const) {
    it(`haproxy ${send} → lb: the client's address is used and passed on with lb's own send_proxy`, async () => {
      const be = await recorder();
      const lb = await startLb(webDoc([{ send_proxy: 'v1', backends: [at(be.port)] }], { accept_proxy: true }));
      const hp = await haproxyInFront(lb.port(), send);
      const before = be.seen.length;
      const clients: { from: string; localPort: number }[] = [];
      for (const from of ['127.0.0.2', '127.0.0.3']) {
        const { localPort } = await exchange(hp, from, `hello from ${from}`);
        clients.push({ from, localPort });
      }
      await until(() => be.seen.filter((b) => b.includes('hello from')).length === 2, 3000, 'both clients at the backend');
      const got = be.seen.slice(before).filter((b) => b.includes('hello from'));
      got.forEach((bytes, i) => {
        const step = new ProxyHeaderParser().push(bytes);
        if (step.state !== 'done') throw new Error(`no header: ${bytes.toString('latin1')}`);
        // haproxy's header said who the client was and what it connected to; lb passes both on.
        expect(step.header.addresses).toEqual({ srcAddr: clients[i]!.from, srcPort: clients[i]!.localPort, dstAddr: '127.0.0.1', dstPort: hp });
        expect(step.rest.toString()).toBe(`hello from ${clients[i]!.from}`);
      });
      for (const c of clients) await lb.logs.waitFor({ event: 'conn', client: `${c.from}:${c.localPort}` });
      expect(lb.listener().state.proxyRejected).toBe(0);
    });
  }
});

describe('send_proxy in front of nginx (stream, listen ... proxy_protocol)', () => {
  it('nginx reports the client address lb sent, v1 and v2, from several source addresses', async () => {
    expect(existsSync(STREAM_MODULE), `${STREAM_MODULE} (Debian libnginx-mod-stream)`).toBe(true);
    const ngx = await nginxProxyProtocol();
    const lb = await startLb(
      webDoc([{ backends: [{ host: '127.0.0.1', port: ngx.port, send_proxy: 'v1' }] }], {}),
    );
    const lb2 = await startLb(webDoc([{ send_proxy: 'v2', backends: [at(ngx.port)] }], {}));
    const seen: string[] = [];
    for (const [port, from] of [[lb.port(), '127.0.0.2'], [lb2.port(), '127.0.0.3'], [lb.port(), '127.0.0.4']] as const) {
      const { reply, localPort } = await exchange(port, from, '');
      expect(reply).toBe(`${from} ${localPort}\n`);
      seen.push(`${from} ${localPort} 127.0.0.1`);
    }
    // The start-up probe connected without a header: nginx logs it as "- -"; the rest came through lb.
    const logged = (): string[] => (existsSync(ngx.log) ? readFileSync(ngx.log, 'utf8').trim().split('\n').filter((l) => !l.startsWith('- ')) : []);
    await until(() => logged().length >= 3, 3000, "nginx's access log");
    expect(logged()).toEqual(seen);
  });

  it('the whole chain: client → haproxy send-proxy-v2 → lb accept_proxy + send_proxy v1 → nginx', async () => {
    const ngx = await nginxProxyProtocol();
    const lb = await startLb(webDoc([{ send_proxy: 'v1', backends: [at(ngx.port)] }], { accept_proxy: true }));
    const hp = await haproxyInFront(lb.port(), 'send-proxy-v2');
    for (const from of ['127.0.0.2', '127.0.0.3']) {
      const { reply, localPort } = await exchange(hp, from, null);
      expect(reply).toBe(`${from} ${localPort}\n`);
    }
  });
});
