// The Telnet stats/control port (TCP and/or a Unix socket): sessions, access control, limits.
//
// A session reads lines and answers each in order; every reply ends with a blank line so a reader knows
// it got all of it. Telnet clients (their lines end in CR LF) get the `lb> ` prompt; scripts sending bare
// LF get replies only, and a client that closes its sending side gets its replies and then the close,
// so `echo show | nc -N 127.0.0.1 8023` works. Nothing a client sends can stop the port or the data path:
// long lines, garbage, floods and idle sessions each meet a limit.

import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { BlockList, isIP, type Server } from 'node:net';
import type { TelnetSocket } from 'telnetlib';
import type { ControlEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code, Exit, LbError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { execute, type ControlTarget, type Session } from './commands.ts';
import { createLineServer, LineConnection, MAX_LINE } from './telnet.ts';

export const PROMPT = 'lb> ';
/** More sessions than an operator team plus its monitoring will ever hold; beyond it, clients are refused. */
export const MAX_SESSIONS = 128;
/** Lines queued from one session before its input is paused (a flood waits; it is not buffered). */
const MAX_QUEUED_LINES = 64;

export function buildAllowList(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [addr, prefix] = cidr.split('/') as [string, string | undefined];
    const type = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
    if (prefix === undefined) list.addAddress(addr, type);
    else list.addSubnet(addr, Number(prefix), type);
  }
  return list;
}

export function isAllowed(list: BlockList, address: string): boolean {
  const v4 = address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
  return list.check(v4, isIP(v4) === 6 ? 'ipv6' : 'ipv4');
}

export class ControlServer {
  private readonly servers: Server[] = [];
  private readonly sessions = new Set<LineConnection>();
  private readonly target: ControlTarget;
  private readonly log: Logger;
  private config: ControlEntry;
  private allow: BlockList;

  constructor(config: ControlEntry, target: ControlTarget, log: Logger) {
    this.config = config;
    this.target = target;
    this.log = log;
    this.allow = buildAllowList(config.allow);
  }

  async start(): Promise<void> {
    const { listen, socket } = this.config;
    try {
      if (listen) await this.listenOn({ host: listen.host ?? undefined, port: listen.port }, formatHostPort(listen.host, listen.port), true);
      if (socket) {
        mkdirSync(dirname(socket), { recursive: true, mode: 0o700 });
        removeStaleSocket(socket);
        await this.listenOn({ path: socket }, socket, false);
        chmodSync(socket, 0o600);
      }
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  /** Where the TCP control port is bound (port 0 in the config means any free port). */
  port(): number {
    const a = this.servers.find((s) => typeof s.address() === 'object')?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  /** A reload may change admin and allow without rebinding. */
  update(config: ControlEntry): void {
    this.config = config;
    this.allow = buildAllowList(config.allow);
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.destroy();
    await Promise.all(this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.servers.length = 0;
    if (this.config.socket) removeStaleSocket(this.config.socket);
  }

  private listenOn(opts: { host?: string; port?: number; path?: string }, where: string, tcp: boolean): Promise<void> {
    const server = createLineServer((telnet) => this.accept(telnet, tcp));
    return new Promise((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new LbError(Code.BIND, `control port: cannot listen on ${where}: ${err.code ?? err.message}`, Exit.UNAVAILABLE)),
      );
      server.listen(opts, () => {
        server.removeAllListeners('error');
        server.on('error', (err) => this.log.log('error', 'control-error', { error: err.message }));
        this.servers.push(server);
        resolve();
      });
    });
  }

  private accept(telnet: TelnetSocket, tcp: boolean): void {
    const session: Session = {
      listener: this.target.table.listeners[0]?.name ?? '',
      group: 0,
      admin: this.config.admin,
      prompt: false,
    };
    const queue: string[] = [];
    let busy = false;
    let ended = false;
    let telnetClient = false;
    const conn: LineConnection = new LineConnection(telnet, {
      line: (text, crlf) => {
        if (crlf && !telnetClient) {
          telnetClient = true;
          session.prompt = true;
        }
        queue.push(text);
        if (queue.length > MAX_QUEUED_LINES) conn.pause();
        void pump();
      },
      overflow: () => {
        queue.push(`\u0000overflow`);
        void pump();
      },
      end: () => {
        ended = true;
        void pump();
      },
      close: () => this.sessions.delete(conn),
    });
    const socket = conn.socket;
    const peer = tcp ? formatHostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0) : 'unix';
    if (tcp && !isAllowed(this.allow, socket.remoteAddress ?? '')) {
      this.log.log('warn', 'control-denied', { code: Code.CONTROL_DENIED, peer });
      conn.write(`error: access denied for ${socket.remoteAddress} (control.allow) [${Code.CONTROL_DENIED}]\n`);
      conn.end();
      return;
    }
    if (this.sessions.size >= MAX_SESSIONS) {
      conn.write(`error: too many control sessions (${MAX_SESSIONS}) [${Code.CONTROL_DENIED}]\n`);
      conn.end();
      return;
    }
    this.sessions.add(conn);
    socket.setTimeout(this.config.idleTimeoutMs);
    socket.on('timeout', () => {
      conn.write('error: idle timeout, closing\n');
      conn.end();
    });

    const eol = (): string => (telnetClient ? '\r\n' : '\n');
    const pump = async (): Promise<void> => {
      if (busy) return;
      busy = true;
      while (queue.length > 0) {
        const line = queue.shift()!;
        if (queue.length <= MAX_QUEUED_LINES / 2) conn.resume();
        let text: string;
        let close = false;
        if (line === '\u0000overflow') {
          text = `error: line longer than ${MAX_LINE} bytes ignored [${Code.CONTROL_BAD_ARGS}]`;
        } else {
          const reply = await execute(this.target, session, line);
          text = reply.error ? `${reply.text} [${reply.error}]` : reply.text;
          close = reply.close ?? false;
          if (line.trim() !== '') this.log.log('info', 'control', { peer, command: line.trim().slice(0, 200), ok: !reply.error });
        }
        if (socket.destroyed) break;
        let out = text === '' ? '' : `${text}\n\n`;
        if (close) {
          conn.write(out.replace(/\n/g, eol()));
          conn.end();
          queue.length = 0;
          break;
        }
        if (session.prompt && !ended) out += PROMPT;
        if (out !== '' && !conn.write(out.replace(/\n/g, eol()))) {
          await new Promise<void>((resolve) => socket.once('drain', resolve));
        }
      }
      busy = false;
      if (ended && !socket.destroyed) conn.end();
    };
  }
}

function removeStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // absent: nothing to remove
  }
}
