// Telnet input decoding for the control port (RFC 854/855), owned here rather than left to telnetlib.
//
// telnetlib's reader hands every subnegotiation to an option parser that trusts its length: six bytes
// (`IAC SB NAWS 0 IAC SE`, or a GMCP one) threw out of a socket callback and ended the whole process.
// The control port needs no Telnet option at all, so this decoder refuses every one (RFC 1143's "NO"
// state, which never loops: a request is answered with a refusal, a refusal with nothing), skips
// subnegotiations without interpreting them, and bounds each one. It is a pure, synchronous state
// machine over bytes: it never throws on input, whatever arrives, in whatever pieces.

import { constants } from 'telnetlib';

const { IAC, SB, SE, WILL, WONT, DO, DONT } = constants.commands;

/** Longest subnegotiation skipped (NAWS is 4 bytes, TTYPE a few dozen); past it the peer is not Telnet. */
export const MAX_SUBNEGOTIATION = 1024;

const State = {
  Data: 0,
  Iac: 1,
  /** The byte after WILL, WONT, DO or DONT: the option's code. */
  Option: 2,
  Sub: 3,
  SubIac: 4,
} as const;
type State = (typeof State)[keyof typeof State];

export interface Decoded {
  /** Data bytes with every Telnet command removed, as latin1 (one character per byte). */
  readonly text: string;
  /** Refusals to send back, already framed (IAC DONT x / IAC WONT x), or null when none. */
  readonly reply: Buffer | null;
  /** Set once the peer broke the protocol beyond repair; the session is to be closed with this reason. */
  readonly error: string | null;
}

export class TelnetDecoder {
  private state: State = State.Data;
  private verb = 0;
  private subLength = 0;
  private failed: string | null = null;

  /** Decodes one chunk; state carries over, so a sequence may be split anywhere. */
  decode(chunk: Uint8Array): Decoded {
    if (this.failed !== null) return { text: '', reply: null, error: this.failed };
    // Data runs are sliced, not copied byte by byte: a command-free chunk (the usual case) is one slice.
    const parts: string[] = [];
    let reply: number[] | null = null;
    let runStart = 0;
    const flush = (end: number): void => {
      if (end > runStart) parts.push(Buffer.from(chunk.buffer, chunk.byteOffset + runStart, end - runStart).toString('latin1'));
    };
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      switch (this.state) {
        case State.Data:
          if (b === IAC) {
            flush(i);
            this.state = State.Iac;
          }
          continue;
        case State.Iac:
          if (b === IAC) {
            parts.push('\xff'); // an escaped 0xFF is data
            this.state = State.Data;
          } else if (b === WILL || b === WONT || b === DO || b === DONT) {
            this.verb = b;
            this.state = State.Option;
          } else if (b === SB) {
            this.subLength = 0;
            this.state = State.Sub;
          } else {
            // NOP, DM, BRK, IP, AO, AYT, EC, EL, GA, EOR, a stray SE, or a code Telnet does not define:
            // none of them means anything to a line-based control port.
            this.state = State.Data;
          }
          break;
        case State.Option:
          // Refuse what the peer offers or asks; never answer a refusal (that is what keeps this loop-free).
          if (this.verb === WILL) (reply ??= []).push(IAC, DONT, b);
          else if (this.verb === DO) (reply ??= []).push(IAC, WONT, b);
          this.state = State.Data;
          break;
        case State.Sub:
          if (b === IAC) this.state = State.SubIac;
          else this.subLength++;
          break;
        case State.SubIac:
          if (b === SE) this.state = State.Data;
          else {
            // IAC IAC is an escaped 0xFF inside the subnegotiation; anything else is a broken one that
            // RFC 855 says to keep skipping until IAC SE.
            this.subLength++;
            this.state = State.Sub;
          }
          break;
      }
      if ((this.state === State.Sub || this.state === State.SubIac) && this.subLength > MAX_SUBNEGOTIATION) {
        this.failed = `Telnet subnegotiation longer than ${MAX_SUBNEGOTIATION} bytes`;
        return { text: parts.join(''), reply: reply && Buffer.from(reply), error: this.failed };
      }
      runStart = i + 1;
    }
    if (this.state === State.Data) flush(chunk.length);
    return { text: parts.length === 1 ? parts[0]! : parts.join(''), reply: reply && Buffer.from(reply), error: null };
  }

  /** Bytes of an unfinished command or subnegotiation held across chunks (for buffer accounting). */
  get pending(): number {
    return this.state === State.Sub || this.state === State.SubIac ? this.subLength : 0;
  }
}

/** Doubles every 0xFF so output data is never read as a Telnet command (RFC 854). */
export function escapeIac(data: Buffer): Buffer {
  let count = 0;
  for (let i = data.indexOf(IAC); i !== -1; i = data.indexOf(IAC, i + 1)) count++;
  if (count === 0) return data;
  const out = Buffer.allocUnsafe(data.length + count);
  let o = 0;
  for (const b of data) {
    out[o++] = b;
    if (b === IAC) out[o++] = IAC;
  }
  return out;
}
