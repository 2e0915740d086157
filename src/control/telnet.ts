// A thin adapter over npm `telnetlib` (1.0.2, unmaintained) that turns a connection into text lines.
//
// It covers the library's known defects (shared/reference/conventions.md §11):
// 1. Its writer corrupts any write containing 0xFF (it iterates indices, not bytes). We escape IAC
//    ourselves and write through its raw path, so output bytes arrive as written.
// 2. Its reader emits data only on CR LF, so a client sending bare LF (nc, scripts) never got an answer;
//    and it drops the connection when 4096 bytes arrive without CR LF. We make it emit every chunk (IAC
//    sequences already removed and answered by its RFC 1143 negotiation) and split lines ourselves on
//    LF, CR LF and CR NUL, with our own line limit.
// 3. Options it is asked to negotiate wait up to 1 s each and send IAC bytes that raw clients print as
//    garbage. We initiate no negotiation; a Telnet client that offers options is answered as it asks.
// These reach into the library's reader/writer fields, which is why the version is pinned exactly.

import { createServer as createTelnetServer, type TelnetSocket } from 'telnetlib';
import type { Server, Socket } from 'node:net';

const IAC = 0xff;
export const MAX_LINE = 4096;

interface TelnetInternals extends TelnetSocket {
  socket: Socket;
  reader: { flushPolicy: { endOfChunk: boolean } };
  writer: { __writeRaw(data: Buffer): void };
}

export interface LineHandlers {
  /** One input line without its end-of-line; `crlf` tells a Telnet client (CR LF / CR NUL) from a script (LF). */
  line(text: string, crlf: boolean): void;
  /** A line longer than MAX_LINE was dropped. */
  overflow(): void;
  /** The client closed its sending side (after its last line was delivered). */
  end(): void;
  close(): void;
}

export class LineConnection {
  readonly socket: Socket;
  private readonly telnet: TelnetInternals;
  private pending = '';
  private discarding = false;

  constructor(telnet: TelnetSocket, handlers: LineHandlers) {
    this.telnet = telnet as TelnetInternals;
    this.socket = this.telnet.socket;
    this.telnet.reader.flushPolicy.endOfChunk = true;
    telnet.on('data', (chunk: Buffer) => this.receive(chunk, handlers));
    telnet.on('end', () => {
      if (this.pending !== '' && !this.discarding) handlers.line(this.pending, false);
      this.pending = '';
      handlers.end();
    });
    telnet.on('error', () => this.socket.destroy());
    this.socket.on('close', () => handlers.close());
  }

  private receive(chunk: Buffer, handlers: LineHandlers): void {
    // latin1 keeps one character per byte, so lengths are byte counts and nothing is lost to decoding.
    const text = this.pending + chunk.toString('latin1');
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      const crnul = text.indexOf('\r\0', start);
      const end = nl < 0 ? crnul : crnul < 0 ? nl : Math.min(nl, crnul);
      if (end < 0) break;
      let line = text.slice(start, end);
      const crlf = end === crnul || line.endsWith('\r');
      if (line.endsWith('\r')) line = line.slice(0, -1);
      start = end + (end === crnul ? 2 : 1);
      if (this.discarding) {
        this.discarding = false; // the rest of an over-long line ends here
        continue;
      }
      if (line.length > MAX_LINE) handlers.overflow(); // the limit holds however the bytes arrived
      else handlers.line(line, crlf);
    }
    this.pending = text.slice(start);
    if (this.pending.length > MAX_LINE) {
      this.pending = '';
      if (!this.discarding) handlers.overflow();
      this.discarding = true;
    }
  }

  /** Writes text as UTF-8 with IAC bytes doubled (RFC 854); returns false when the peer is slow. */
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
    this.telnet.writer.__writeRaw(data);
    return this.socket.writableLength < 64 * 1024;
  }

  pause(): void {
    this.telnet.pause();
  }

  resume(): void {
    this.telnet.resume();
  }

  end(): void {
    this.telnet.end();
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
