// The Telnet stats/control port (TCP and/or a Unix socket): sessions, access control, limits.
//
// A session reads lines and answers each in order; every reply ends with a blank line so a reader knows
// it got all of it. Telnet clients (their lines end in CR LF) get the `lb> ` prompt; scripts sending bare
// LF get replies only, and a client that closes its sending side gets its replies and then the close,
// so `echo show | nc -N 127.0.0.1 8023` works. Nothing a client sends can stop the port or the data path:
// long lines, garbage, floods and idle sessions each meet a limit.

import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { BlockList, isIP, type Server, type Socket } from 'node:net';
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
  private readonly sessions = new Set<ControlSession>();
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
    const refusal = (socket: Socket): string | null => {
      if (tcp && !isAllowed(this.allow, socket.remoteAddress ?? '')) {
        const peer = formatHostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0);
        this.log.log('warn', 'control-denied', { code: Code.CONTROL_DENIED, peer });
        return `error: access denied for ${socket.remoteAddress} (control.allow) [${Code.CONTROL_DENIED}]`;
      }
      if (this.sessions.size >= MAX_SESSIONS) return `error: too many control sessions (${MAX_SESSIONS}) [${Code.CONTROL_DENIED}]`;
      return null;
    };
    const session = new ControlSession(telnet, tcp, this.target, this.log, this.config, refusal, () => this.sessions.delete(session));
    if (!session.refused) this.sessions.add(session);
  }
}

/** How long a session we are closing may take to read our last words before its socket is destroyed. */
const CLOSE_GRACE_MS = 1000;

/** One client of the control port: its lines are executed one at a time, in order. */
class ControlSession {
  readonly refused: boolean;
  private readonly conn: LineConnection;
  private readonly socket: Socket;
  private readonly peer: string;
  private readonly target: ControlTarget;
  private readonly log: Logger;
  private readonly state: Session;
  private readonly queue: string[] = [];
  private busy = false;
  private ended = false;
  private telnetClient = false;
  private released = false;
  private readonly closed: () => void;

  constructor(
    telnet: TelnetSocket,
    tcp: boolean,
    target: ControlTarget,
    log: Logger,
    config: ControlEntry,
    refusal: (socket: Socket) => string | null,
    closed: () => void,
  ) {
    this.target = target;
    this.log = log;
    this.closed = closed;
    this.state = { listener: target.table.listeners[0]?.name ?? '', group: 0, admin: config.admin, prompt: false };
    this.conn = new LineConnection(telnet, {
      line: (text, crlf) => this.line(text, crlf),
      overflow: () => this.line(OVERFLOW, false),
      end: () => {
        this.ended = true;
        void this.pump();
      },
      close: () => this.release(),
    });
    this.socket = this.conn.socket;
    this.peer = tcp ? formatHostPort(this.socket.remoteAddress ?? '?', this.socket.remotePort ?? 0) : 'unix';
    const refused = refusal(this.socket);
    this.refused = refused !== null;
    if (refused !== null) {
      this.close(refused);
      return;
    }
    this.socket.setTimeout(config.idleTimeoutMs);
    this.socket.on('timeout', () => this.close(`error: idle timeout, closing [${Code.CONTROL_IDLE}]`));
  }

  destroy(): void {
    this.conn.destroy();
  }

  private line(text: string, crlf: boolean): void {
    if (this.refused) return; // its refusal is on the way out; nothing it sends is read
    if (crlf && !this.telnetClient) {
      this.telnetClient = true;
      this.state.prompt = true;
    }
    this.queue.push(text);
    if (this.queue.length > MAX_QUEUED_LINES) this.conn.pause();
    void this.pump();
  }

  /** Gives the session's slot back (once): a session being closed no longer counts against the limit. */
  private release(): void {
    if (this.released || this.refused) return; // a refused session never had a slot
    this.released = true;
    this.closed();
  }

  /** Last words, then the connection ends; a client that does not close its side is cut after a grace. */
  private close(text: string): void {
    this.release();
    this.write(text === '' ? '' : `${text}\n\n`);
    this.conn.end();
    setTimeout(() => this.conn.destroy(), CLOSE_GRACE_MS).unref();
  }

  private write(text: string): boolean {
    return text === '' || this.conn.write(this.telnetClient ? text.replace(/\n/g, '\r\n') : text);
  }

  private async pump(): Promise<void> {
    if (this.busy || this.refused) return;
    this.busy = true;
    while (this.queue.length > 0) {
      const line = this.queue.shift()!;
      if (this.queue.length <= MAX_QUEUED_LINES / 2) this.conn.resume();
      let text: string;
      let close = false;
      if (line === OVERFLOW) {
        text = `error: line longer than ${MAX_LINE} bytes ignored [${Code.CONTROL_BAD_ARGS}]`;
      } else {
        const reply = await execute(this.target, this.state, line);
        text = reply.error ? `${reply.text} [${reply.error}]` : reply.text;
        close = reply.close ?? false;
        if (line.trim() !== '') {
          this.log.log('info', 'control', { peer: this.peer, command: printable(line.trim()).slice(0, 200), ok: !reply.error });
        }
      }
      if (this.socket.destroyed) break;
      if (close) {
        this.queue.length = 0;
        this.close(text);
        break;
      }
      let out = text === '' ? '' : `${text}\n\n`;
      if (this.state.prompt && !this.ended) out += PROMPT;
      if (!this.write(out)) await new Promise<void>((resolve) => this.socket.once('drain', resolve));
    }
    this.busy = false;
    if (this.ended && !this.socket.destroyed) this.conn.end();
  }
}

/** A marker no client can send (NUL never survives line splitting as a whole line of its own). */
const OVERFLOW = '\u0000overflow';

/** What a client typed, safe to log or echo: control and non-ASCII bytes as `?`. */
export function printable(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?');
}

function removeStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // absent: nothing to remove
  }
}
