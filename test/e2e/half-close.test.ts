// Half-close through lb: an EOF from one side reaches the other side as a FIN and the other direction
// keeps flowing until it ends too (`printf req | nc -N` clients; balance cut both directions at once).

import { afterEach, describe, expect, it } from 'vitest';
import {
  answerAfterEofServer,
  connectClient,
  deadHost,
  echoServer,
  nextConnection,
  until,
  within,
  type ReceivedStream,
  type SinkServer,
} from '../helpers/backends.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(cleanup);

describe('half-close', () => {
  it('client FIN first: the backend sees EOF, still answers, and the client gets the whole answer', async () => {
    const backend = await answerAfterEofServer('after-eof', (req) => `answer to ${req.toString()} (${req.length} bytes)`);
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }]));
    const c = await connectClient(lb.port());
    c.socket.end('GET /half-close'); // request, then FIN: nc -N
    const req = await within(backendReceived(backend, 0), 3000, 'the backend to see the client FIN');
    expect(req.data.toString()).toBe('GET /half-close');
    await within(c.ended, 3000, 'the answer and the FIN from lb');
    expect(c.text()).toBe('answer to GET /half-close (15 bytes)');
    const conn = await lb.logs.waitFor('conn');
    expect(conn.fields).toMatchObject({ end: 'client-close', sent: '15', rcvd: String('answer to GET /half-close (15 bytes)'.length) });
    expect(lb.listener().state.cur).toBe(0);
  });

  it('a request and FIN sent before lb has a backend (failover in between) arrive whole, in order', async () => {
    const dead = await deadHost();
    const backend = await answerAfterEofServer('after-eof', (req) => `answer to ${req.toString()}`);
    const lb = await startLb(webDoc([{ backends: [at(dead.port), at(backend.port)] }], { connect_timeout: '300ms' }));
    const c = await connectClient(lb.port());
    c.socket.write('part one, ');
    c.socket.end('part two'); // all of it before lb's first connect attempt has even timed out
    await within(c.ended, 3000, 'the answer after the failover');
    expect(c.text()).toBe('answer to part one, part two');
    expect((await lb.logs.waitFor('connect-failed')).fields.reason).toBe('ETIMEDOUT');
    expect((await lb.logs.waitFor('conn')).fields).toMatchObject({ end: 'client-close', sent: '18' });
  });

  it('backend FIN first: the client gets EOF and can still send; the backend receives it', async () => {
    const backend = await echoServer('unused');
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }]));
    const accepted = nextConnection(backend);
    const c = await connectClient(lb.port());
    const server = await accepted;
    server.removeAllListeners('data'); // this connection is driven by hand, not echoed
    server.removeAllListeners('end');
    const fromClient: Buffer[] = [];
    server.on('data', (d: Buffer) => fromClient.push(d));
    const serverGotFin = new Promise<void>((r) => server.once('end', () => r()));

    server.end('bye from the backend'); // backend FIN first, its read side stays open
    await within(c.ended, 3000, 'the backend FIN to reach the client');
    expect(c.text()).toBe('bye from the backend');
    expect(c.socket.writable).toBe(true);

    c.socket.write('still ');
    c.socket.end('talking');
    await within(serverGotFin, 3000, "the client's late bytes and FIN to reach the backend");
    expect(Buffer.concat(fromClient).toString()).toBe('still talking');
    const conn = await lb.logs.waitFor('conn');
    expect(conn.fields).toMatchObject({ end: 'backend-close', sent: '13', rcvd: '20' });
    await within(c.closed, 3000, 'the client socket to close');
    expect(lb.listener().state.cur).toBe(0);
  });

  it('both directions keep flowing in turns after the first FIN', async () => {
    const backend = await echoServer('echo');
    const lb = await startLb(webDoc([{ backends: [at(backend.port)] }]));
    const accepted = nextConnection(backend);
    const c = await connectClient(lb.port());
    const server = await accepted;
    server.removeAllListeners('data');
    server.removeAllListeners('end');
    let got = '';
    server.on('data', (d: Buffer) => {
      got += d.toString();
    });
    server.end(); // the backend has nothing to say
    await within(c.ended, 3000, 'the FIN from lb');
    for (let i = 0; i < 5; i++) {
      c.socket.write(`chunk${i};`);
      await until(() => got.includes(`chunk${i};`), 3000, 'each chunk to arrive after the FIN');
    }
    expect(got).toBe('chunk0;chunk1;chunk2;chunk3;chunk4;');
  });
});

async function backendReceived(backend: SinkServer, i: number): Promise<ReceivedStream> {
  await until(() => backend.received.length > i, 3000, 'a connection on the backend');
  return backend.received[i]!;
}
