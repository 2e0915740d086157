// The control port's connections as text lines. telnetlib creates the server and wraps each socket; the
// Telnet protocol itself is decoded here (telnet-codec.ts), because the library's reader is unsafe on
// hostile input (an `IAC SB NAWS` of the wrong length threw out of a socket callback and ended lb), and
// because of its other defects (shared/reference/conventions.md §11):
// 1. Its writer corrupts any write containing 0xFF (it iterates indices, not bytes), and it pushes
//    without backpressure. We escape IAC ourselves and write to the socket, whose buffer we can see.
// 2. Its reader emits data only on CR LF (a client sending bare LF, like nc, never got an answer) and
//    drops the connection at 4096 bytes without CR LF. We split lines ourselves on LF, CR LF and CR NUL,
//    with our own line limit.
// 3. Options it is asked to negotiate wait up to 1 s each and send IAC bytes that raw clients print as
//    garbage. We initiate no negotiation and refuse every option a client offers or asks for.
// So the library's reader and writer are unplugged from the socket the moment a connection arrives.
//
// Input is pulled, not pushed: the session asks for the next line when it is ready for it, so a flood
// waits in a bounded buffer (then in the kernel, the socket paused) instead of in a queue of lines, and
// the splitter scans each byte once however the lines arrive.

import { createServer as createTelnetServer, type TelnetSocket } from 'telnetlib';
import type { Server, Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { escapeIac, TelnetDecoder } from './telnet-codec.ts';

export const MAX_LINE = 4096;
/** Unread input held before the socket is paused (and read again once below INPUT_LOW). */
const INPUT_HIGH = 64 * 1024;
const INPUT_LOW = 16 * 1024;
/** Unread output above which `write` asks the caller to wait for the client to read. */
export const OUTPUT_HIGH = 64 * 1024;

/** The library's fields this adapter touches: only to unplug them. */
interface TelnetInternals extends TelnetSocket {
  socket: Socket;
  reader: Writable;
  writer: Readable;
}

/** A line that was longer than MAX_LINE: it was dropped, and the client is to be told. */
export const OVERLONG = Symbol('overlong line');

export type Line = { readonly text: string; readonly crlf: boolean } | typeof OVERLONG;

export interface LineEvents {
  /** New input arrived, or the client closed its sending side: lines may be waiting in `next()`. */
  readable(): void;
  /** Raw bytes arrived (before any line is taken): the moment to check buffer limits. */
  received(): void;
  /** The session cannot go on: the client broke the protocol, or handling its input threw. */
  failed(reason: string, err?: Error): void;
  close(): void;
}

export class LineConnection {
  readonly socket: Socket;
  private readonly decoder = new TelnetDecoder();
  /** Input not yet taken as lines (latin1: one character per byte, so lengths are byte counts). */
  private buf = '';
  private pos = 0;
  /** Characters of `buf` before this index hold no line end: a later scan starts there. */
  private scanned = 0;
  private discarding = false;
  private eof = false;
  private paused = false;
  private stopped = false;
  /** Negotiation answers written since the socket's buffer was last empty (see pendingAnswers). */
  private answers = 0;

  constructor(telnet: TelnetSocket, events: LineEvents) {
    const internals = telnet as TelnetInternals;
    const socket = (this.socket = internals.socket);
    socket.unpipe(internals.reader);
    internals.writer.unpipe(socket);
    telnet.on('error', () => socket.destroy()); // the library re-emits socket errors on its wrapper
    socket.on('data', (chunk: Buffer) => {
      // The error boundary of the session's input: nothing a client sends may escape this callback.
      try {
        const d = this.decoder.decode(chunk);
        if (d.reply !== null && !socket.destroyed) {
          if (socket.writableLength === 0) this.answers = 0;
          this.answers += d.reply.length;
          socket.write(d.reply);
        }
        if (d.text !== '') this.append(d.text);
        events.received();
        if (d.error !== null) events.failed(d.error);
        else events.readable();
      } catch (err) {
        events.failed('internal error reading input', err as Error);
      }
    });
    socket.once('end', () => {
      this.eof = true;
      events.readable();
    });
    socket.resume();
    socket.on('close', () => events.close());
  }

  /** Reads no more input (a session being closed): what the client sends now waits in the kernel. */
  stopReading(): void {
    this.stopped = true;
    this.socket.pause();
  }

  private append(text: string): void {
    if (this.pos === this.buf.length) {
      this.buf = text;
      this.scanned = 0;
    } else {
      // Bounded: input stops being read at INPUT_HIGH, so this copies at most that much once per chunk.
      this.buf = this.buf.slice(this.pos) + text;
      this.scanned -= this.pos;
    }
    this.pos = 0;
    if (this.buf.length > INPUT_HIGH && !this.paused) {
      this.paused = true;
      if (!this.stopped) this.socket.pause();
    }
  }

  /** The next complete line, OVERLONG for a dropped one, or null when more input is needed. */
  next(): Line | null {
    for (;;) {
      const [end, eolLength] = this.findEnd();
      if (end < 0) {
        const rest = this.buf.length - this.pos;
        if (this.discarding || rest > MAX_LINE) {
          const wasDiscarding = this.discarding;
          this.consume(this.buf.length);
          this.discarding = !this.eof;
          if (!wasDiscarding) return OVERLONG; // the limit holds however the bytes arrived
          return null;
        }
        if (this.eof && rest > 0) {
          const text = this.buf.slice(this.pos);
          this.consume(this.buf.length);
          return { text, crlf: false }; // a last line without its end of line
        }
        this.consume(this.pos);
        return null;
      }
      const start = this.pos;
      this.consume(end + eolLength);
      if (this.discarding) {
        this.discarding = false; // the rest of an over-long line ends here
        continue;
      }
      const cr = eolLength === 1 && end > start && this.buf.charCodeAt(end - 1) === 13;
      const stop = cr ? end - 1 : end;
      if (stop - start > MAX_LINE) return OVERLONG;
      return { text: this.buf.slice(start, stop), crlf: eolLength === 2 || cr };
    }
  }

  /** True once the client has closed its sending side and every line has been taken. */
  get ended(): boolean {
    return this.eof && this.pos === this.buf.length;
  }

  /** Finds the next LF or CR NUL from `pos` in one pass: [index, length of the line end] or [-1, 0]. */
  private findEnd(): [number, number] {
    const buf = this.buf;
    const len = buf.length;
    let i = Math.max(this.pos, this.scanned);
    for (; i < len; i++) {
      const c = buf.charCodeAt(i);
      if (c === 10) return [i, 1];
      if (c === 13 && i + 1 < len && buf.charCodeAt(i + 1) === 0) return [i, 2];
    }
    // A CR at the very end may start a CR NUL the next chunk completes: scan it again then.
    this.scanned = len > 0 && buf.charCodeAt(len - 1) === 13 ? len - 1 : len;
    return [-1, 0];
  }

  private consume(to: number): void {
    this.pos = to;
    if (this.paused && this.buf.length - this.pos < INPUT_LOW) {
      this.paused = false;
      if (!this.stopped) this.socket.resume();
    }
  }

  /** Input lb holds for this session: not yet taken as lines, or inside an unfinished subnegotiation. */
  bufferedInput(): number {
    return this.buf.length - this.pos + this.decoder.pending;
  }

  /** Output the client has not read yet. */
  unreadOutput(): number {
    return this.socket.writableLength;
  }

  /**
   * Telnet negotiation answers among the unread output: those written since the socket's buffer was
   * last empty, which is exact for a client that floods requests and reads nothing.
   */
  pendingAnswers(): number {
    return Math.min(this.answers, this.socket.writableLength);
  }

  /** Writes text as UTF-8 with IAC bytes doubled (RFC 854); returns false when the client is slow. */
  write(text: string): boolean {
    if (!this.socket.destroyed) this.socket.write(escapeIac(Buffer.from(text, 'utf8')));
    return this.unreadOutput() < OUTPUT_HIGH;
  }

  /** Resolves once unread output is below OUTPUT_HIGH or the socket is gone. */
  async drained(): Promise<void> {
    while (this.unreadOutput() >= OUTPUT_HIGH && !this.socket.destroyed) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.socket.off('drain', done);
          this.socket.off('close', done);
          resolve();
        };
        this.socket.once('drain', done);
        this.socket.once('close', done);
        if (!this.socket.writableNeedDrain) setImmediate(done);
      });
    }
  }

  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function createLineServer(onConnection: (telnet: TelnetSocket) => void): Server {
  return createTelnetServer(
    { localOptions: [], remoteOptions: [], receiveBufferMax: 1 << 20, allowHalfOpen: true },
    onConnection,
  );
}
