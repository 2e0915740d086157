// The control port survives any bytes (issue 29), against a real lb process: the two six-byte Telnet
// sequences that ended lb through telnetlib's option parsers, and a generated fuzzer of Telnet sequences
// (fixed seed, so a failure can be replayed) sent by sessions that never authenticate. After every batch
// lb answers `show`, relays a connection, and no backend changed state (such a session can change nothing).
// LB_TELNET_FUZZ=N sets how many sequences (10,000 by default: about 5 s here).

import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { prng } from '../../bench/lib/prng.ts';
import { ask, backendOf, echoServer, HOST, track, within } from '../helpers/backends.ts';
import { adminControl, ctl, expectAlive, openSession, parseShow, startCliLb, useControlScope, webToml, type CliLb } from '../helpers/control.ts';

const scope = useControlScope();

const IAC = 0xff;
const [SE, NOP, SB, WILL, WONT, DO, DONT] = [240, 241, 250, 251, 252, 253, 254];
const VERBS = [WILL, WONT, DO, DONT];
const SEQUENCES = Number(process.env.LB_TELNET_FUZZ ?? 10_000);
const BATCH = 50;

async function fuzzLb(): Promise<{ lbp: CliLb; port: number; web: number }> {
  const [a, b] = await Promise.all([echoServer('a', { prefix: true }), echoServer('b', { prefix: true })]);
  // A token is configured: a session that does not send it can read, never change anything.
  const lbp = await startCliLb([scope.scratch().write('lb.toml', webToml(adminControl(), [a.port, b.port]))]);
  return { lbp, port: lbp.controlPort, web: lbp.ports.web! };
}

/** lb is alive, its control port answers, it relays, and every backend is as it was (`states`). */
async function expectServing(lbp: CliLb, port: number, web: number, states: string): Promise<void> {
  expectAlive(lbp);
  const show = await ctl(port, 'show');
  expect(backendStates(show)).toBe(states);
  expect(backendOf(await ask(web, 'still relaying'))).toMatch(/^[ab]$/);
}

function backendStates(show: string): string {
  return [...parseShow(show).values()].flat().map((r) => `${r.grp}/${r.ch}:${r.state}:${r.maxc}`).join(' ');
}

/** One generated sequence: the shapes that broke or could break a Telnet reader, alone or mixed. */
function sequence(rnd: () => number): Buffer {
  const int = (n: number): number => Math.floor(rnd() * n);
  const randomBytes = (n: number): number[] => Array.from({ length: n }, () => int(256));
  const text = (n: number): number[] => Array.from({ length: n }, () => 0x20 + int(95));
  const shapes: (() => number[])[] = [
    // IAC in every position of a line, alone or followed by any byte.
    () => {
      const line = text(1 + int(40));
      const at = int(line.length + 1);
      return [...line.slice(0, at), IAC, ...(rnd() < 0.5 ? [int(256)] : []), ...line.slice(at), 10];
    },
    // SB without SE (the rest of the session is inside it).
    () => [IAC, SB, int(256), ...randomBytes(int(64))],
    // A truncated or short subnegotiation: NAWS with 0-3 bytes, or any option with a few.
    () => [IAC, SB, rnd() < 0.5 ? 31 : int(256), ...randomBytes(int(4)), IAC, SE],
    // An oversized one, under and over lb's 1024-byte bound.
    () => [IAC, SB, int(256), ...randomBytes(900 + int(400)).map((b) => (b === IAC ? 0 : b)), IAC, SE],
    // WILL/WONT/DO/DONT storms.
    () => Array.from({ length: 1 + int(300) }, () => [IAC, VERBS[int(4)]!, int(256)]).flat(),
    // NUL and CR without LF.
    () => Array.from({ length: 1 + int(80) }, () => [0, 13, 0x41 + int(26)][int(3)]!),
    // Anything.
    () => randomBytes(int(512)),
    // Commands of no meaning (NOP, GA, a stray SE, DM), IAC IAC, then a line.
    () => [IAC, NOP, IAC, 249, IAC, SE, IAC, 242, IAC, IAC, ...text(int(20)), 13, 10],
  ];
  const parts = 1 + int(3);
  const out: number[] = [];
  for (let i = 0; i < parts; i++) out.push(...shapes[int(shapes.length)]!());
  return Buffer.from(out);
}

/** Sends `data` on a new control connection, half-closes, reads (and drops) everything, resolves on close. */
function sendAndClose(port: number, data: Buffer): Promise<void> {
  const s = net.connect({ port, host: HOST, allowHalfOpen: true });
  s.on('error', () => undefined);
  s.on('data', () => undefined);
  s.on('end', () => s.end());
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()));
  track({ close: async () => void s.destroy() });
  s.on('connect', () => s.end(data));
  return within(closed, 10_000, 'a fuzz session to be closed by lb');
}

describe('the control port survives any bytes', () => {
  it('IAC SB NAWS 0 IAC SE and a GMCP subnegotiation, before any auth: the session reads on, lb lives', async () => {
    const { lbp, port, web } = await fuzzLb();
    const states = backendStates(await ctl(port, 'show'));
    for (const seq of [[IAC, SB, 31, 0, IAC, SE], [IAC, SB, 201, 0x78, IAC, SE]]) {
      const s = await openSession(port, { auth: false });
      s.write(Buffer.concat([Buffer.from(seq), Buffer.from('version\n')]));
      await s.waitRaw((b) => b.includes('This is lb'), 5000, `the reply to version after ${Buffer.from(seq).toString('hex')}`);
      await s.close();
      await expectServing(lbp, port, web, states);
    }
  });

  it(`${SEQUENCES} generated Telnet sequences in batches of ${BATCH}: after each batch lb serves, and nothing changed`, async () => {
    const { lbp, port, web } = await fuzzLb();
    const states = backendStates(await ctl(port, 'show'));
    const rnd = prng(0x29c0de);
    const t0 = Date.now();
    for (let done = 0; done < SEQUENCES; done += BATCH) {
      const batch = Array.from({ length: Math.min(BATCH, SEQUENCES - done) }, () => sequence(rnd));
      await Promise.all(batch.map((seq) => sendAndClose(port, seq)));
      await expectServing(lbp, port, web, states);
    }
    // Sessions closed for a broken subnegotiation are logged once per 5 s burst, not once each.
    const failedLines = lbp.stderr().split('\n').filter((l) => l.includes('control-session-failed'));
    expect(failedLines.length).toBeGreaterThan(0);
    expect(failedLines.length).toBeLessThanOrEqual(2 + (Date.now() - t0) / 5000);
    for (const l of failedLines) expect(l).toMatch(/code=LB_CONTROL_TELNET .*count=\d+/);
  }, 120_000);
});
