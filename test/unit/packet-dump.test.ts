// Packet dump formats (src/proxy/dump.ts): balance's escaped `-p` format against the real output quoted in
// ../shared/reference/balance.md §10, and the `hexdump -C` style blocks.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { balanceDump, hexDump } from '../../src/proxy/dump.ts';
import { BALANCE_DUMP_FIRST_EXCHANGE, BALANCE_DUMP_REQUEST } from '../helpers/balance-dump.ts';

const bytes = (...parts: (string | number[] | Uint8Array)[]): Buffer =>
  Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));

// The request of balance.md §10: `GET / HTTP/1.0\r\nX: a\b<00><FF><7F>\n` (26 bytes).
const REQUEST = BALANCE_DUMP_REQUEST;
const PREFIX = '[7001] ';

describe('balanceDump (balance -p)', () => {
  it('reproduces the real output of balance.md §10 byte for byte', () => {
    const out =
      balanceDump('c>b', REQUEST) +
      balanceDump('b>c', bytes(PREFIX, REQUEST)) +
      balanceDump('c>b', new Uint8Array(0)) +
      balanceDump('c>b', Buffer.alloc(100, 'A')) +
      balanceDump('b>c', bytes(PREFIX, 'A'.repeat(100))) +
      balanceDump('c>b', new Uint8Array(0));
    const expected = [
      ...BALANCE_DUMP_FIRST_EXCHANGE,
      '-> 100',
      'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
      'AAAAAAAAAAAAAAAAAAA',
      '-< 107',
      '[7001] AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
      'AAAAAAAAAAAAAAAAAAAAAAAAAA',
      '-> 0',
      '',
      '',
    ].join('\n');
    expect(out).toBe(expected);
  });

  it('reproduces the upstream 3.54 sample (ping\\tpong\\n)', () => {
    const msg = 'ping\tpong\n';
    const out = balanceDump('c>b', bytes(msg)) + balanceDump('b>c', bytes(PREFIX, msg)) + balanceDump('c>b', new Uint8Array(0));
    expect(out).toBe('-> 10\nping\\09pong\\0A\n\n-< 17\n[7001] ping\\09pong\\0A\n\n-> 0\n\n');
  });

  it('wraps the 100 × A line after column 81 (81 + 19)', () => {
    const lines = balanceDump('c>b', Buffer.alloc(100, 'A')).split('\n');
    expect(lines.map((l) => l.length)).toEqual([6, 81, 19, 0]);
  });

  it('escapes: backslash doubled, non-printables as upper-case \\XX, printable ASCII as is', () => {
    expect(balanceDump('c>b', bytes('a\\b'))).toBe('-> 3\na\\\\b\n');
    expect(balanceDump('b>c', bytes([0x00, 0x1f, 0x7f, 0x80, 0xab, 0xff]))).toBe('-< 6\n\\00\\1F\\7F\\80\\AB\\FF\n');
    expect(balanceDump('c>b', bytes(' ~'))).toBe('-> 2\n ~\n');
    expect(balanceDump('c>b', bytes('x\ny'))).toBe('-> 3\nx\\0A\ny\n');
    expect(balanceDump('b>c', new Uint8Array(0))).toBe('-< 0\n\n');
  });

  it('an escape that crosses column 80 ends the line after it (lines of at most 83 characters)', () => {
    expect(balanceDump('c>b', bytes('A'.repeat(79), [0x01], 'B'))).toBe(`-> 81\n${'A'.repeat(79)}\\01\nB\n`);
    const noisy = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) & 0xff));
    const body = balanceDump('c>b', noisy).split('\n').slice(1);
    for (const line of body) expect(line.length).toBeLessThanOrEqual(83);
    // Nothing lost: undoing the escapes gives the bytes back.
    const text = body.join('');
    const back = Buffer.from(
      text.replace(/\\\\|\\([0-9A-F]{2})/g, (m: string, hex: string | undefined) => (hex ? String.fromCharCode(parseInt(hex, 16)) : '\\')),
      'latin1',
    );
    expect(back.equals(noisy)).toBe(true);
  });
});

describe('hexDump', () => {
  it('is a hexdump -C block headed by connection id, direction and length', () => {
    const out = hexDump(7, 'c>b', bytes('GET / HTTP/1.0\r\n\r\nabc', [0x00, 0xff]));
    expect(out).toBe(
      [
        '#7 client -> backend 23 bytes',
        '00000000  47 45 54 20 2f 20 48 54  54 50 2f 31 2e 30 0d 0a  |GET / HTTP/1.0..|',
        '00000010  0d 0a 61 62 63 00 ff                              |..abc..|',
        '00000017',
        '',
      ].join('\n'),
    );
  });

  it('names the direction backend -> client, and an empty chunk is just the header and offset', () => {
    expect(hexDump(12, 'b>c', new Uint8Array(0))).toBe('#12 backend -> client 0 bytes\n00000000\n');
    expect(hexDump(3, 'b>c', bytes('0123456789abcdef'))).toBe(
      '#3 backend -> client 16 bytes\n00000000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|\n00000010\n',
    );
  });

  it('matches `hexdump -v -C` for arbitrary bytes', (ctx) => {
    const data = Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 131 + 7) & 0xff));
    const dir = mkdtempSync(path.join(tmpdir(), 'lb-hex-'));
    try {
      const file = path.join(dir, 'chunk.bin');
      writeFileSync(file, data);
      const real = spawnSync('hexdump', ['-v', '-C', file], { encoding: 'latin1' });
      if (real.error) ctx.skip(); // no hexdump on this machine: the frozen cases above still apply
      const ours = hexDump(1, 'c>b', data);
      expect(ours).toBe(`#1 client -> backend 300 bytes\n${real.stdout}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
