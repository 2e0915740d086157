// A thin adapter over npm `telnetlib` (1.0.2, unmaintained) that turns a connection into text lines.
//
// It covers the library's known defects (shared/reference/conventions.md §11):
// 1. Its writer corrupts any write containing 0xFF (it iterates indices, not bytes), and it pushes
//    without backpressure, so output a client never reads would pile up inside it. We escape IAC
//    ourselves and write to the socket, whose buffer we can see and wait on.
// 2. Its reader emits data only on CR LF, so a client sending bare LF (nc, scripts) never got an answer;
//    and it drops the connection when 4096 bytes arrive without CR LF. We make it emit every chunk (IAC
//    sequences already removed and answered by its RFC 1143 negotiation) and never a line at a time (a
//    flood of CR LF lines would be one event per line), and split lines ourselves on LF, CR LF and
//    CR NUL, with our own line limit.
// 3. Options it is asked to negotiate wait up to 1 s each and send IAC bytes that raw clients print as
//    garbage. We initiate no negotiation; a Telnet client that offers options is answered as it asks.
// These reach into the library's reader/writer fields, which is why the version is pinned exactly.
//
// Input is pulled, not pushed: the session asks for the next line when it is ready for it, so a flood
// waits in a bounded buffer (then in the kernel, the socket paused) instead of in a queue of lines, and
// the splitter scans each byte once however the lines arrive.

import { createServer as createTelnetServer, type TelnetSocket } from 'telnetlib';
import type { Server, Socket } from 'node:net';
import type { Readable, Transform } from 'node:stream';

const IAC = 0xff;
export const MAX_LINE = 4096;
/** Unread input held before the socket is paused (and read again once below INPUT_LOW). */
const INPUT_HIGH = 64 * 1024;
const INPUT_LOW = 16 * 1024;
/** Unread output above which `write` asks the caller to wait for the client to read. */
export const OUTPUT_HIGH = 64 * 1024;
/** Largest piece of a read handed to the library's reader at once (see the constructor). */
const FEED_SLICE = 4096;

/** The library's fields this adapter uses (see the defects above). */
interface TelnetInternals extends TelnetSocket {
  socket: Socket;
  reader: Transform & { flushPolicy: { endOfChunk: boolean }; _maybeFlush(reason: string): void };
  writer: Readable & { __writeRaw(data: Buffer): void };
}

/** A line that was longer than MAX_LINE: it was dropped, and the client is to be told. */
export const OVERLONG = Symbol('overlong line');

export type Line = { readonly text: string; readonly crlf: boolean } | typeof OVERLONG;

export interface LineEvents {
  /** New input arrived, or the client closed its sending side: lines may be waiting in `next()`. */
  readable(): void;
  /** Raw bytes arrived (before any line is taken): the moment to check buffer limits. */
  received(): void;
  close(): void;
}

export class LineConnection {
  readonly socket: Socket;
  private readonly telnet: TelnetInternals;
  /** Input not yet taken as lines (latin1: one character per byte, so lengths are byte counts). */
  private buf = '';
  private pos = 0;
  /** Characters of `buf` before this index hold no line end: a later scan starts there. */
  private scanned = 0;
  private discarding = false;
  private eof = false;
  private paused = false;
  private writerDropped = false;
  private stopped = false;

  constructor(telnet: TelnetSocket, events: LineEvents) {
    this.telnet = telnet as TelnetInternals;
    this.socket = this.telnet.socket;
    const reader = this.telnet.reader;
    reader.flushPolicy.endOfChunk = true;
    const flush = reader._maybeFlush.bind(reader);
    reader._maybeFlush = (reason: string) => {
      if (reason !== 'DATA') flush(reason); // not per CR LF: the whole chunk is flushed at its end
    };
    telnet.on('data', (chunk: Buffer) => {
      this.append(chunk.toString('latin1'));
      events.readable();
    });
    telnet.on('end', () => {
      this.eof = true;
      events.readable();
    });
    telnet.on('error', () => this.socket.destroy());
    // The library's reader collects each chunk byte by byte in a JS array: a 64 KiB read makes an array
    // big enough for V8's large-object space, which only a full GC frees, so a few sessions sending
    // megabytes grew RSS by hundreds of MiB. We feed it small slices instead (arrays the young
    // generation frees cheaply), with the same backpressure its pipe had.
    const socket = this.socket;
    socket.unpipe(reader);
    socket.on('data', (chunk: Buffer) => {
      let room = true;
      for (let i = 0; i < chunk.length; i += FEED_SLICE) room = reader.write(chunk.subarray(i, i + FEED_SLICE));
      events.received(); // after the reader ran, so its negotiation answers are counted
      if (!room && !this.stopped) {
        socket.pause();
        reader.once('drain', () => {
          if (!this.stopped) socket.resume();
        });
      }
    });
    socket.once('end', () => reader.end());
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
      this.telnet.pause();
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
      this.telnet.resume();
    }
  }

  /** Input lb holds for this session: not yet taken as lines, or inside the library's reader. */
  bufferedInput(): number {
    const r = this.telnet.reader;
    return this.buf.length - this.pos + r.readableLength + r.writableLength;
  }

  /** Output the client has not read yet: in the socket's buffer or in the library's writer. */
  unreadOutput(): number {
    return this.socket.writableLength + this.pendingAnswers();
  }

  /**
   * Telnet negotiation answers waiting in the library's writer (it pushes them whatever the client
   * reads). Each is a 3-byte Buffer of its own, so their memory is far more than their bytes.
   */
  pendingAnswers(): number {
    return this.writerDropped ? 0 : this.telnet.writer.readableLength;
  }

  /** Writes text as UTF-8 with IAC bytes doubled (RFC 854); returns false when the client is slow. */
  write(text: string): boolean {
    let data = Buffer.from(text, 'utf8');
    if (data.includes(IAC)) {
      const out: number[] = [];
      for (const b of data) {
        out.push(b);
        if (b === IAC) out.push(IAC);
      }
      data = Buffer.from(out);
    }
    if (!this.socket.destroyed) this.socket.write(data);
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
        // The library's writer may hold the output while the socket itself has room: it is flowing
        // into the socket right now, so look again on the next turn.
        if (!this.socket.writableNeedDrain) setImmediate(done);
      });
    }
  }

  /**
   * Forgets output queued in the library's writer (Telnet negotiation answers a flooding client never
   * read); our own writes already sit in the socket and still go out.
   */
  dropPendingOutput(): void {
    if (this.writerDropped) return;
    this.writerDropped = true;
    this.telnet.writer.unpipe(this.socket);
    this.telnet.writer.destroy();
  }

  end(): void {
    if (this.writerDropped) this.socket.end();
    else this.telnet.end();
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
