// The Telnet stats/control port (TCP and/or a Unix socket): sessions, access levels, limits.
//
// A session reads lines and answers each in order; every reply ends with a blank line so a reader knows
// it got all of it. Telnet clients (their lines end in CR LF) get the `lb> ` prompt; scripts sending bare
// LF get replies only, and a client that closes its sending side gets its replies and then the close,
// so `echo show | nc -N 127.0.0.1 8023` works. Nothing a client sends can stop the port or the data path:
// long lines, garbage, floods and idle sessions each meet a limit, and a session gives the event loop
// back every few lines however fast its lines arrive.
//
// Access (access.ts): a Unix-socket session starts at `socket_level`, a TCP session at `read`; `auth
// TOKEN` raises either to `level`. A reload re-applies `allow`, the levels and the token to open sessions.

import { chmodSync, lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import net, { BlockList, isIP, type Server, type Socket } from 'node:net';
import type { TelnetSocket } from 'telnetlib';
import type { ControlEntry } from '../config/table.ts';
import { formatHostPort } from '../config/values.ts';
import { Code, Exit, LbError } from '../errors.ts';
import { controlCommandEvent, levelEnabled, type Logger } from '../log.ts';
import { LogBurst } from '../log-burst.ts';
import { AUTH_MAX_FAILURES, AuthThrottle, readToken, sessionLevel, tokenMatches } from './access.ts';
import { COMMANDS, execute, type ControlTarget, type Reply, type Session } from './commands.ts';
import { createLineServer, LineConnection, MAX_LINE, OVERLONG, type Line } from './telnet.ts';

export const PROMPT = 'lb> ';
/** More sessions than an operator team plus its monitoring will ever hold; beyond it, clients are refused. */
export const MAX_SESSIONS = 128;
/** Lines one session runs before it gives the event loop back (the data path runs in between)... */
const LINES_PER_TURN = 64;
/** ...or sooner, once it has held the loop this long. */
const TURN_MS = 5;
/**
 * What one session may make lb hold: replies its client has not read (including Telnet negotiation
 * answers) and input not yet taken as lines. A session past either is closed with the reason. Replies
 * stop being produced at OUTPUT_HIGH (64 KiB) and input stops being read at 64 KiB, so only a client
 * that provokes output without reading (a negotiation flood) or an internal fault reaches these.
 */
export const MAX_UNREAD_OUTPUT = 1 << 20;
/** Characters of a reply written at a time (at most 4 bytes each: with OUTPUT_HIGH, far below the limit). */
const REPLY_SLICE = 64 * 1024;
export const MAX_BUFFERED_INPUT = 1 << 20;
/** Telnet option answers a client may leave unread (a real client negotiates a handful of options). */
export const MAX_UNREAD_ANSWERS = 16 * 1024;
/** Command log lines one session may cause per second; the rest are counted in one summary line. */
const LOG_PER_SECOND = 50;
/** Mode of the Unix socket: the service's user and group may connect. */
export const SOCKET_MODE = 0o660;
/** How long a connect to an existing socket may take to prove a live instance owns it. */
const LIVE_CHECK_MS = 1000;
/** Sessions closed for a protocol violation or an exception: at most one log line per this many ms. */
const SESSION_FAILURE_LOG_MS = 5000;
/** Longest Unix socket path (sun_path less its terminating NUL on Linux). */
const MAX_SOCKET_PATH = 107;

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

/** Socket paths this process serves (path → inode): a reload that rebinds takes them over without a check. */
const ownSockets = new Map<string, number>();

/** What a session needs from its server; the server's settings may change under it (reload). */
interface SessionHost {
  readonly target: ControlTarget;
  readonly log: Logger;
  readonly throttle: AuthThrottle;
  config(): ControlEntry;
  allowed(address: string): boolean;
  /** The token `auth` compares with; null when none is configured or it could not be read. */
  token(): string | null;
  release(session: ControlSession): void;
  /** Sessions closed for breaking the protocol or by an exception: logged once per burst, over all sessions. */
  readonly failures: LogBurst;
}

export class ControlServer {
  private readonly servers: Server[] = [];
  private readonly sessions = new Set<ControlSession>();
  private readonly host: SessionHost;
  private config: ControlEntry;
  private allow: BlockList;
  private token: string | null = null;
  /** The inode of the socket this server put in place, so close() never removes a successor's. */
  private socketIno: number | null = null;
  /** The Unix socket bound but not yet in place (a reload's, until it commits): see publish(). */
  private pendingSocket: { staging: string; temp: string; path: string } | null = null;

  constructor(config: ControlEntry, target: ControlTarget, log: Logger) {
    this.config = config;
    this.allow = buildAllowList(config.allow);
    this.host = {
      target,
      log,
      throttle: new AuthThrottle(),
      config: () => this.config,
      allowed: (address) => isAllowed(this.allow, address),
      token: () => this.token,
      release: (session) => this.sessions.delete(session),
      failures: new LogBurst(SESSION_FAILURE_LOG_MS),
    };
  }

  /**
   * Binds the TCP port and the Unix socket. `staged` (a reload): the socket is bound beside the path and
   * put in place only by publish(), so a reload refused later leaves the running server's socket there.
   */
  async start(opts: { staged?: boolean } = {}): Promise<void> {
    const { listen, socket, tokenFile } = this.config;
    try {
      if (tokenFile !== null) this.token = loadToken(tokenFile, this.host.log);
      if (listen) await this.listenOn({ host: listen.host ?? undefined, port: listen.port }, formatHostPort(listen.host, listen.port), true);
      if (socket) await this.listenUnix(socket);
      if (!opts.staged) this.publish();
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  /**
   * Renames the bound Unix socket into place, which replaces a previous server's (or a stale one)
   * atomically: at start at once, at a reload once every worker committed.
   */
  publish(): void {
    const p = this.pendingSocket;
    if (!p) return;
    this.pendingSocket = null;
    try {
      renameSync(p.temp, p.path);
      this.socketIno = lstatSync(p.path).ino;
      ownSockets.set(p.path, this.socketIno);
    } finally {
      rmSync(p.staging, { recursive: true, force: true });
    }
  }

  /** Where the TCP control port is bound (port 0 in the config means any free port). */
  port(): number {
    const a = this.servers.find((s) => typeof s.address() === 'object')?.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  /**
   * A reload with the same addresses: new allow list, levels, idle timeout and token, applied to the
   * sessions already open too. Never throws: a token file that cannot be read is logged and leaves no
   * token, so nothing is raised above its endpoint's base level (fail closed).
   */
  update(config: ControlEntry): void {
    let token: string | null = null;
    if (config.tokenFile !== null) {
      try {
        token = loadToken(config.tokenFile, this.host.log);
      } catch (err) {
        this.host.log.log('error', 'control-error', { code: Code.CONTROL_AUTH, error: (err as Error).message });
      }
    }
    const tokenChanged = token !== this.token;
    this.config = config;
    this.allow = buildAllowList(config.allow);
    this.token = token;
    for (const s of [...this.sessions]) s.reconfigure(tokenChanged);
  }

  /**
   * A reload moved the control endpoints: the old ones stop accepting and go; each open session finishes
   * the command it is running (the `reload` that moved them gets its answer), then is told and closed.
   * Not waited for: the session running that `reload` ends only after the reload returns.
   */
  retire(): void {
    for (const s of [...this.sessions]) s.retire(`error: this control endpoint was replaced by a reload: reconnect [${Code.CONTROL_MOVED}]`);
    void this.stopListening();
  }

  /** Shutdown: every session ends now. */
  async close(): Promise<void> {
    for (const s of this.sessions) s.destroy();
    await this.stopListening();
  }

  /** Stops accepting, removes our socket; resolves once the servers' connections have ended too. */
  private async stopListening(): Promise<void> {
    const closing = this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    this.servers.length = 0;
    if (this.pendingSocket) rmSync(this.pendingSocket.staging, { recursive: true, force: true });
    this.pendingSocket = null;
    const path = this.config.socket;
    if (path && this.socketIno !== null) {
      // Only our own socket: a reload's new server may already have put its own at this path.
      try {
        if (lstatSync(path).ino === this.socketIno) unlinkSync(path);
      } catch {
        // already gone
      }
      if (ownSockets.get(path) === this.socketIno) ownSockets.delete(path);
      this.socketIno = null;
    }
    await Promise.all(closing);
  }

  private listenOn(opts: { host?: string; port?: number; path?: string }, where: string, tcp: boolean): Promise<Server> {
    const server = createLineServer((telnet) => this.accept(telnet, tcp));
    return new Promise((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new LbError(Code.BIND, `control port: cannot listen on ${where}: ${err.code ?? err.message}`, Exit.UNAVAILABLE)),
      );
      server.listen(opts, () => {
        server.removeAllListeners('error');
        server.on('error', (err) => this.host.log.log('error', 'control-error', { error: err.message }));
        this.servers.push(server);
        resolve(server);
      });
    });
  }

  /**
   * The Unix socket, created with its final mode from the start: it is bound inside a fresh 0700
   * directory next to the target (where nobody else can reach it), chmod'ed there, then renamed into
   * place, which also replaces a stale socket atomically. (umask around listen would do the same but
   * changes a process-wide setting that other code, and worker threads, may be creating files under.)
   * The rename is publish()'s.
   */
  private async listenUnix(path: string): Promise<void> {
    const dir = dirname(path);
    prepareSocketDir(dir);
    if (!ownSockets.has(path)) await refuseLiveSocket(path);
    const staging = mkdtempSync(join(dir, '.lb-'));
    const temp = join(staging, 's');
    if (Buffer.byteLength(temp) > MAX_SOCKET_PATH) {
      rmSync(staging, { recursive: true, force: true });
      throw new LbError(
        Code.CONTROL_SOCKET,
        `control socket ${path}: the directory's path is too long for a Unix socket (at most ${MAX_SOCKET_PATH - 10} bytes for the directory)`,
        Exit.CONFIG,
      );
    }
    try {
      await this.listenOn({ path: temp }, path, false);
      chmodSync(temp, SOCKET_MODE);
    } catch (err) {
      rmSync(staging, { recursive: true, force: true });
      throw err;
    }
    this.pendingSocket = { staging, temp, path };
  }

  private accept(telnet: TelnetSocket, tcp: boolean): void {
    const refusal = (socket: Socket): string | null => {
      if (tcp && !this.host.allowed(socket.remoteAddress ?? '')) {
        const peer = formatHostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0);
        this.host.log.log('warn', 'control-denied', { code: Code.CONTROL_DENIED, peer });
        return `error: access denied for ${socket.remoteAddress} (control.allow) [${Code.CONTROL_DENIED}]`;
      }
      if (this.sessions.size >= MAX_SESSIONS) return `error: too many control sessions (${MAX_SESSIONS}) [${Code.CONTROL_DENIED}]`;
      return null;
    };
    const session = new ControlSession(telnet, tcp, this.host, refusal);
    if (!session.refused) this.sessions.add(session);
  }
}

function loadToken(file: string, log: Logger): string {
  let token: string;
  try {
    token = readToken(file);
  } catch (err) {
    throw new LbError(Code.CONTROL_AUTH, `control: ${(err as Error).message}`, Exit.CONFIG);
  }
  if (token.length < 16) {
    log.log('warn', 'control-weak-token', { file, length: token.length, hint: 'use at least 16 random characters' });
  }
  return token;
}

/** How long a session we are closing may take to read our last words before its socket is destroyed. */
const CLOSE_GRACE_MS = 1000;

/** One client of the control port: its lines are executed one at a time, in order. */
class ControlSession {
  readonly refused: boolean;
  private readonly conn: LineConnection;
  private readonly socket: Socket;
  private readonly tcp: boolean;
  private readonly peer: string;
  private readonly host: SessionHost;
  private readonly state: Session;
  private busy = false;
  /** Set by retire(): the last words once the running command is answered. */
  private retiring: string | null = null;
  private closing = false;
  private ending = false;
  private telnetClient = false;
  private released = false;
  private authenticated = false;
  private authFailures = 0;
  private logWindow = 0;
  private logged = 0;
  private suppressed = 0;

  constructor(telnet: TelnetSocket, tcp: boolean, host: SessionHost, refusal: (socket: Socket) => string | null) {
    this.host = host;
    this.tcp = tcp;
    const config = host.config();
    this.state = {
      listener: host.target.table.listeners[0]?.name ?? '',
      group: 0,
      level: sessionLevel(config, tcp ? 'tcp' : 'unix', false),
      prompt: false,
      authenticate: (token) => this.authenticate(token),
    };
    this.conn = new LineConnection(telnet, {
      readable: () => void this.pump(),
      received: () => this.checkLimits(),
      failed: (reason, err) => this.fail(reason, err),
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

  /** Closes the session with `text`, once the command it is running (if any) has been answered. */
  retire(text: string): void {
    this.retiring = text;
    if (!this.busy) this.close(text);
  }

  /** After a reload: the new allow list and levels; a changed token takes back what the old one gave. */
  reconfigure(tokenChanged: boolean): void {
    if (this.closing) return;
    if (this.tcp && !this.host.allowed(this.socket.remoteAddress ?? '')) {
      this.host.log.log('warn', 'control-denied', { code: Code.CONTROL_DENIED, peer: this.peer, reason: 'reload' });
      this.close(`error: access withdrawn by a reload (control.allow) [${Code.CONTROL_DENIED}]`);
      return;
    }
    if (tokenChanged) this.authenticated = false;
    const config = this.host.config();
    this.state.level = sessionLevel(config, this.tcp ? 'tcp' : 'unix', this.authenticated);
    this.socket.setTimeout(config.idleTimeoutMs);
  }

  private async authenticate(given: string): Promise<Reply> {
    const token = this.host.token();
    if (token === null) {
      return { text: 'error: this port takes no token (control.token_file is not set or could not be read)', error: Code.CONTROL_AUTH };
    }
    if (tokenMatches(given, token)) {
      this.authFailures = 0;
      this.authenticated = true;
      this.state.level = sessionLevel(this.host.config(), this.tcp ? 'tcp' : 'unix', true);
      this.host.log.log('info', 'control-auth', { peer: this.peer, level: this.state.level });
      return { text: `level ${this.state.level}` };
    }
    this.authFailures++;
    const delay = this.host.throttle.failed(this.authFailures, Date.now());
    this.host.log.log('warn', 'control-auth-failed', { code: Code.CONTROL_AUTH, peer: this.peer, failures: this.authFailures });
    // The answer waits: a guesser learns nothing faster than one try per delay.
    await new Promise<void>((resolve) => setTimeout(resolve, delay).unref());
    if (this.authFailures >= AUTH_MAX_FAILURES) {
      return { text: `error: wrong token; closing after ${this.authFailures} failures`, error: Code.CONTROL_AUTH, close: true };
    }
    return { text: 'error: wrong token', error: Code.CONTROL_AUTH };
  }

  /**
   * One log line per command, but at most LOG_PER_SECOND a second per session: a flood of commands
   * must not become a flood of log lines (the journal, and whoever reads it, would pay for it).
   */
  private logCommand(command: string, reply: Reply): void {
    const name = command.split(/\s+/, 1)[0]!.toLowerCase();
    const e = controlCommandEvent(this.peer, name === 'auth' ? 'auth' : command, reply, COMMANDS[name]?.level === 'read');
    if (!levelEnabled(this.host.log.level, e.level)) return; // reads at debug: not written, not counted
    const now = Date.now();
    if (now - this.logWindow >= 1000) {
      this.flushSuppressed();
      this.logWindow = now;
      this.logged = 0;
    }
    if (this.logged >= LOG_PER_SECOND) {
      this.suppressed++;
      return;
    }
    this.logged++;
    this.host.log.log(e.level, e.event, e.fields);
  }

  private flushSuppressed(): void {
    if (this.suppressed === 0) return;
    this.host.log.log('warn', 'control-log-suppressed', { peer: this.peer, commands: this.suppressed, limit: `${LOG_PER_SECOND}/s` });
    this.suppressed = 0;
  }

  /** Gives the session's slot back (once): a session being closed no longer counts against the limit. */
  private release(): void {
    this.flushSuppressed();
    if (this.released || this.refused) return; // a refused session never had a slot
    this.released = true;
    this.host.release(this);
  }

  /** Last words, then the connection ends; a client that does not close its side is cut after a grace. */
  private close(text: string): void {
    if (this.closing) return;
    this.closing = true;
    this.conn.stopReading();
    this.release();
    this.write(text === '' ? '' : `${text}\n\n`);
    this.end();
    setTimeout(() => this.conn.destroy(), CLOSE_GRACE_MS).unref();
  }

  private end(): void {
    if (this.ending) return;
    this.ending = true;
    this.conn.end();
  }

  /** Closes a session that makes lb hold more than it may (see MAX_UNREAD_OUTPUT). */
  private checkLimits(): void {
    if (this.closing || this.refused) return;
    const unread = this.conn.unreadOutput();
    const input = this.conn.bufferedInput();
    const answers = this.conn.pendingAnswers();
    let reason: string | null = null;
    if (answers > MAX_UNREAD_ANSWERS) reason = `${answers} bytes of Telnet option answers unread (limit ${MAX_UNREAD_ANSWERS})`;
    else if (unread > MAX_UNREAD_OUTPUT) reason = `${unread} bytes of replies unread (limit ${MAX_UNREAD_OUTPUT})`;
    else if (input > MAX_BUFFERED_INPUT) reason = `${input} bytes of input pending (limit ${MAX_BUFFERED_INPUT})`;
    if (reason === null) return;
    this.host.log.log('warn', 'control-flood', { code: Code.CONTROL_FLOOD, peer: this.peer, reason });
    this.close(`error: closing this session: ${reason} [${Code.CONTROL_FLOOD}]`);
  }

  private write(text: string): boolean {
    return text === '' || this.conn.write(this.telnetClient ? text.replace(/\n/g, '\r\n') : text);
  }

  /**
   * Runs the lines that are there, in order, one at a time. Lines are pulled from the connection, so
   * whatever has not been run yet stays in its bounded input buffer (then in the kernel); every
   * LINES_PER_TURN lines or TURN_MS the event loop gets a turn, so the data path never waits on us.
   */
  private async pump(): Promise<void> {
    if (this.busy || this.refused || this.closing) return;
    this.busy = true;
    try {
      await this.run();
    } catch (err) {
      this.fail('internal error running a command', err as Error);
    } finally {
      this.busy = false;
    }
    if (this.retiring !== null) this.close(this.retiring);
    else if (this.conn.ended && !this.closing && !this.socket.destroyed) this.end();
  }

  /**
   * The error boundary of one session: whatever went wrong inside it (a protocol violation, or an
   * exception lb did not foresee) closes this session with a log line, and never reaches the process.
   */
  private fail(reason: string, err?: Error): void {
    if (this.closing) return;
    const code = err ? Code.SESSION_FAILED : Code.CONTROL_TELNET;
    // One line per burst over all sessions (`count` sessions closed since the last line): a client opening
    // broken sessions in a loop writes a few lines, not one per session.
    const count = this.host.failures.hit();
    if (count > 0) {
      const error = err ? (err.stack ?? err.message) : undefined;
      this.host.log.log(err ? 'error' : 'warn', 'control-session-failed', { code, peer: this.peer, reason, count, error });
    }
    this.close(`error: closing this session: ${reason} [${code}]`);
  }

  private async run(): Promise<void> {
    let handled = 0;
    let turnStart = performance.now();
    while (!this.closing && !this.socket.destroyed && this.retiring === null) {
      const line = this.conn.next();
      if (line === null) break;
      await this.handle(line);
      if (++handled >= LINES_PER_TURN || performance.now() - turnStart > TURN_MS) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        handled = 0;
        turnStart = performance.now();
      }
    }
  }

  private async handle(line: Line): Promise<void> {
    let text: string;
    let close = false;
    if (line === OVERLONG) {
      text = `error: line longer than ${MAX_LINE} bytes ignored [${Code.CONTROL_BAD_ARGS}]`;
    } else {
      if (line.crlf && !this.telnetClient) {
        this.telnetClient = true;
        this.state.prompt = true;
      }
      const reply = await execute(this.host.target, this.state, line.text);
      text = reply.error ? `${reply.text} [${reply.error}]` : reply.text;
      close = reply.close ?? false;
      const command = loggable(line.text);
      if (command !== '') this.logCommand(command, reply);
    }
    if (this.socket.destroyed || this.closing) return;
    if (close) {
      this.close(text);
      return;
    }
    let out = text === '' ? '' : `${text}\n\n`;
    if (this.state.prompt && !this.conn.ended) out += PROMPT;
    await this.writeReply(out);
  }

  /**
   * A reply goes out in slices, each once the client has read the last below OUTPUT_HIGH: one reply may
   * be far larger than what a session may leave unread (`show json` of 10,000 backends is 8 MB), and
   * written whole it would count as unread output and close the session of a client that reads it all.
   */
  private async writeReply(out: string): Promise<void> {
    for (let at = 0; at < out.length && !this.closing && !this.socket.destroyed; ) {
      let end = Math.min(out.length, at + REPLY_SLICE);
      if (end < out.length && isHighSurrogate(out.charCodeAt(end - 1))) end--; // never split a character
      const slice = out.slice(at, end);
      at = end;
      if (!this.write(slice)) {
        this.checkLimits();
        await this.conn.drained();
      }
    }
  }
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}

/** What a client typed, safe to log or echo: control and non-ASCII bytes as `?`. */
export function printable(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?');
}

/** A command line as it may be logged: printable, cut, and never an `auth` token. */
export function loggable(line: string): string {
  const trimmed = line.trim();
  const name = trimmed.split(/\s/, 1)[0]!;
  if (name === 'auth') return 'auth';
  return printable(trimmed).slice(0, Object.hasOwn(COMMANDS, name) ? 200 : 60);
}

function unsafeDir(dir: string, why: string): LbError {
  return new LbError(Code.CONTROL_SOCKET, `control socket directory ${dir}: ${why}`, Exit.CONFIG);
}

/**
 * Creates the socket's directory (0700) if needed and refuses one where someone else could replace or
 * intercept the socket: not a directory, owned by another user (root excepted), writable by everyone
 * without the sticky bit, or, inside a directory everyone may write to (like /tmp, where anyone could
 * have made it first, e.g. balance's /tmp/lb-UID), not ours alone (owner lb, no group/other access).
 */
export function prepareSocketDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new LbError(Code.CONTROL_SOCKET, `control socket directory ${dir}: cannot create it: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, Exit.CANTCREAT);
  }
  const uid = process.getuid?.();
  const parent = statSync(dirname(dir));
  const exposed = (parent.mode & 0o002) !== 0 && dir !== dirname(dir);
  const own = lstatSync(dir);
  if (exposed) {
    if (!own.isDirectory()) throw unsafeDir(dir, `not a directory${own.isSymbolicLink() ? ' (a symbolic link)' : ''} in ${dirname(dir)}, which everyone may write to`);
    if (uid !== undefined && own.uid !== uid) throw unsafeDir(dir, `belongs to uid ${own.uid}, not to this process (uid ${uid}); remove it`);
    if ((own.mode & 0o077) !== 0) {
      throw unsafeDir(dir, `mode ${(own.mode & 0o777).toString(8)} lets others in; it must be 700 (chmod 700 ${dir})`);
    }
    return;
  }
  const st = statSync(dir); // a symbolic link set by root or us (/var/run → /run) is fine here
  if (!st.isDirectory()) throw unsafeDir(dir, 'not a directory');
  if (uid !== undefined && st.uid !== uid && st.uid !== 0) throw unsafeDir(dir, `belongs to uid ${st.uid}, not to this process (uid ${uid}) or root`);
  if ((st.mode & 0o002) !== 0 && (st.mode & 0o1000) === 0) throw unsafeDir(dir, 'everyone may write to it (and it has no sticky bit)');
}

/**
 * An existing path is replaced only when it is a socket nobody answers on (left by a killed lb); a live
 * instance's socket, or anything that is not a socket, is never touched.
 */
async function refuseLiveSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) {
    throw new LbError(Code.CONTROL_SOCKET, `control socket ${path}: a file that is not a socket is in the way; remove it or choose another path`, Exit.CONFIG);
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    const done = (answer: boolean): void => {
      clearTimeout(timer);
      probe.destroy();
      resolve(answer);
    };
    // No answer in time: something holds it (a stopped process still accepts): treat it as live.
    const timer = setTimeout(() => done(true), LIVE_CHECK_MS);
    probe.once('connect', () => done(true));
    probe.once('error', (err: NodeJS.ErrnoException) => done(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT'));
  });
  if (live) {
    throw new LbError(
      Code.CONTROL_SOCKET,
      `control socket ${path} is in use by a running process (another lb?); stop it or set another control.socket`,
      Exit.UNAVAILABLE,
    );
  }
  // Stale: the rename in listenUnix replaces it in one step.
}
