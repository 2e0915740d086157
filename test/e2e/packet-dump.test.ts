// Packet dump through a real relay to packet_dump_file: balance's format reproduces balance.md §10 (plus
// the backend's own EOF, which lb relays as a half-close where balance cut the connection), hex format
// gives one hexdump -C block per chunk with the connection id.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { connectClient, echoServer, freePort, within } from '../helpers/backends.ts';
import { BALANCE_DUMP_FIRST_EXCHANGE, BALANCE_DUMP_REQUEST } from '../helpers/balance-dump.ts';
import { at, cleanup, spawnLb, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-dump-'));
});
afterEach(async () => {
  await cleanup();
  rmSync(dir, { recursive: true, force: true });
});

/** One exchange: send, wait for the whole echo, FIN, wait for the echo's FIN and lb's access-log line. */
async function exchange(lb: InProcessLb, data: Buffer, answerLength: number, nth: number): Promise<void> {
  const c = await connectClient(lb.port());
  c.socket.write(data);
  await c.waitFor((b) => b.length >= answerLength, 3000, `the ${answerLength}-byte echo`);
  c.socket.end();
  await within(c.ended, 3000, 'the echo to half-close back');
  await lb.logs.waitFor('conn', { count: nth });
}

describe('packet dump to a file', () => {
  it('balance format: the exact output of balance.md §10', async () => {
    const echo = await echoServer('7001', { prefix: true });
    const file = path.join(dir, 'dump.txt');
    const lb = await startLb(webDoc([{ backends: [at(echo.port)] }], { packet_dump: 'balance', packet_dump_file: file }));
    const request = BALANCE_DUMP_REQUEST;
    expect(request.length).toBe(26);
    await exchange(lb, request, 33, 1);
    await exchange(lb, Buffer.alloc(100, 'A'), 107, 2);
    await lb.stop(); // closes the dump file, so everything written is on disk
    const expected = [
      ...BALANCE_DUMP_FIRST_EXCHANGE,
      '-< 0', // lb only: the echo backend's FIN after the client's, relayed instead of cut
      '',
      '-> 100',
      'A'.repeat(81),
      'A'.repeat(19),
      '-< 107',
      `[7001] ${'A'.repeat(74)}`,
      'A'.repeat(26),
      '-> 0',
      '',
      '-< 0',
      '',
      '',
    ].join('\n');
    expect(readFileSync(file, 'latin1')).toBe(expected);
  });

  it('hex format: one hexdump -C block per chunk, headed by connection id, direction and length', async () => {
    const echo = await echoServer('e', { prefix: true });
    const file = path.join(dir, 'hex.txt');
    const lb = await startLb(webDoc([{ backends: [at(echo.port)] }], { packet_dump: 'hex', packet_dump_file: file }));
    await exchange(lb, Buffer.from('ping\tpong\n'), 14, 1);
    await lb.stop();
    const conn = lb.logs.all('conn')[0]!;
    const id = conn.fields.id!;
    expect(readFileSync(file, 'latin1')).toBe(
      [
        `#${id} client -> backend 10 bytes`,
        '00000000  70 69 6e 67 09 70 6f 6e  67 0a                    |ping.pong.|',
        '0000000a',
        `#${id} backend -> client 14 bytes`,
        '00000000  5b 65 5d 20 70 69 6e 67  09 70 6f 6e 67 0a        |[e] ping.pong.|',
        '0000000e',
        '',
      ].join('\n'),
    );
  });

  it('packet_dump off (the default): a real lb process writes nothing on stdout for traffic', async () => {
    const echo = await echoServer('e');
    const port = await freePort();
    const lb = await spawnLb([String(port), at(echo.port)]);
    const c = await connectClient(port);
    c.socket.write('quiet');
    await c.waitFor((b) => b.length >= 5, 3000, 'the echo');
    c.socket.end();
    await within(c.ended, 3000, 'the echo to half-close back');
    await lb.logs.waitFor('conn');
    expect(lb.stdout()).toBe('');
  });
});
