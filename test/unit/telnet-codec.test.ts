// The control port's Telnet decoder (a pure state machine): data passes through with every command
// removed, every option is refused exactly once (never a refusal of a refusal), subnegotiations are
// skipped whatever they hold and bounded, and no input, split anywhere, makes it throw.

import { describe, expect, it } from 'vitest';
import { escapeIac, MAX_SUBNEGOTIATION, TelnetDecoder } from '../../src/control/telnet-codec.ts';
import { prng } from '../../bench/lib/prng.ts';

const IAC = 0xff;
const [SE, NOP, SB, WILL, WONT, DO, DONT] = [240, 241, 250, 251, 252, 253, 254];
const NAWS = 31;
const ECHO = 1;
const SGA = 3;
const GMCP = 201;

function decodeAll(chunks: Uint8Array[]): { text: string; reply: number[]; error: string | null } {
  const d = new TelnetDecoder();
  let text = '';
  const reply: number[] = [];
  let error: string | null = null;
  for (const c of chunks) {
    const r = d.decode(c);
    text += r.text;
    if (r.reply) reply.push(...r.reply);
    error ??= r.error;
  }
  return { text, reply, error };
}

const bytes = (...b: (number | string)[]): Buffer =>
  Buffer.concat(b.map((x) => (typeof x === 'string' ? Buffer.from(x, 'latin1') : Buffer.from([x]))));

describe('TelnetDecoder', () => {
  it('the sequences that ended lb through telnetlib: skipped, and the line after them is read', () => {
    // IAC SB NAWS 0 IAC SE (a NAWS of one byte instead of four) and a GMCP subnegotiation.
    for (const seq of [bytes(IAC, SB, NAWS, 0, IAC, SE), bytes(IAC, SB, GMCP, 0x78, IAC, SE)]) {
      expect(decodeAll([Buffer.concat([seq, bytes('version\n')])])).toEqual({ text: 'version\n', reply: [], error: null });
    }
  });

  it("answers as lb always has: DO ECHO → WONT ECHO, WILL NAWS → DONT NAWS, and refusals get no answer", () => {
    const r = decodeAll([bytes(IAC, DO, ECHO, IAC, WILL, NAWS, IAC, DONT, SGA, IAC, WONT, SGA, 'show\r\n')]);
    expect(r.reply).toEqual([IAC, WONT, ECHO, IAC, DONT, NAWS]);
    expect(r.text).toBe('show\r\n');
  });

  it('IAC IAC is a data 0xFF; other commands (NOP, GA, a stray SE) vanish', () => {
    expect(decodeAll([bytes('a', IAC, IAC, 'b', IAC, NOP, 'c', IAC, SE, 'd', IAC, 249, 'e')]).text).toBe('a\xffbcde');
  });

  it('gives the same result however the input is split (every split point of a mixed stream)', () => {
    const stream = bytes('x', IAC, DO, ECHO, 'y', IAC, SB, NAWS, 0, 80, IAC, IAC, 24, IAC, SE, 'z', IAC, IAC, IAC, WILL, NAWS, '\r\n');
    const whole = decodeAll([stream]);
    expect(whole).toEqual({ text: 'xyz\xff\r\n', reply: [IAC, WONT, ECHO, IAC, DONT, NAWS], error: null });
    for (let i = 0; i <= stream.length; i++) {
      for (let j = i; j <= stream.length; j++) {
        expect(decodeAll([stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)])).toEqual(whole);
      }
    }
  });

  it(`a subnegotiation longer than ${MAX_SUBNEGOTIATION} bytes (or one never ended) fails the session once, then decodes nothing`, () => {
    const d = new TelnetDecoder();
    expect(d.decode(bytes(IAC, SB, NAWS)).error).toBeNull();
    expect(d.pending).toBe(1);
    const r = d.decode(Buffer.alloc(MAX_SUBNEGOTIATION + 10, 0x41));
    expect(r.error).toMatch(/subnegotiation longer than 1024 bytes/);
    expect(d.decode(bytes('show\n'))).toEqual({ text: '', reply: null, error: r.error });
  });

  it('a subnegotiation of exactly the limit is skipped', () => {
    const body = Buffer.alloc(MAX_SUBNEGOTIATION - 1, 0x41); // the option code counts too
    expect(decodeAll([bytes(IAC, SB, NAWS), body, bytes(IAC, SE, 'ok\n')])).toEqual({ text: 'ok\n', reply: [], error: null });
  });

  it('20,000 random inputs in random pieces: never throws, answers only with refusals, and gives no more text than it got', () => {
    const rnd = prng(0x7e1e7);
    for (let n = 0; n < 20_000; n++) {
      const len = Math.floor(rnd() * 64);
      const input = Buffer.alloc(len);
      for (let i = 0; i < len; i++) {
        const r = rnd();
        // Bytes Telnet gives meaning to are made common, so every state is reached often.
        input[i] = r < 0.3 ? IAC : r < 0.5 ? [SE, SB, WILL, WONT, DO, DONT, NOP][Math.floor(rnd() * 7)]! : Math.floor(rnd() * 256);
      }
      const pieces: Buffer[] = [];
      for (let at = 0; at < len; ) {
        const step = 1 + Math.floor(rnd() * 8);
        pieces.push(input.subarray(at, at + step));
        at += step;
      }
      const r = decodeAll(pieces);
      for (let i = 0; i < r.reply.length; i += 3) {
        expect(r.reply[i]).toBe(IAC);
        expect([DONT, WONT]).toContain(r.reply[i + 1]);
      }
      expect(r.text.length).toBeLessThanOrEqual(len);
    }
  });
});

describe('escapeIac', () => {
  it('doubles every 0xFF and returns input without one as it is', () => {
    const plain = Buffer.from('show\n');
    expect(escapeIac(plain)).toBe(plain);
    expect([...escapeIac(bytes('a', IAC, 'b', IAC, IAC))]).toEqual([0x61, IAC, IAC, 0x62, IAC, IAC, IAC, IAC]);
  });
});
