// Run as a child process under a low descriptor limit (prlimit) by test/e2e/native-accept.test.ts: a
// native listener whose clients are held pending (one descriptor each, never decided for), so that its
// accept4 fails with EMFILE once the limit is reached. The clients come from the test process (this one
// has no descriptor to spare). Talks in JSON lines: prints {"port"}; prints {"full"} at the first pause;
// on "measure" prints {"paused", "ticks"}: pauses and CPU ticks over one second at the limit (a listener
// polled while accept4 fails would spin); on "release" frees 10 descriptors and prints {"accepted"}: the
// clients accepted from the backlog afterwards.

import { openSync, readSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { spliceListen, type AcceptedConn } from '../../src/proxy/splice.ts';

const pending: AcceptedConn[] = [];
let pauses = 0;
const say = (o: object): void => void process.stdout.write(`${JSON.stringify(o)}\n`);
const l = spliceListen('127.0.0.1', 0, 511, false, 0, {
  accepted(conn) {
    conn.owner = { nativeConnected: () => undefined, nativeConnectFailed: () => undefined, nativeEnded: () => undefined };
    pending.push(conn);
  },
  paused() {
    if (pauses++ === 0) say({ full: pending.length });
  },
});
if (typeof l === 'string') throw new Error(`spliceListen: ${l}`);
// Opened now: at the limit there is no descriptor left to open it with.
const statFd = openSync('/proc/self/stat', 'r');
const statBuf = Buffer.alloc(4096);
const ticks = (): number => {
  const n = readSync(statFd, statBuf, 0, statBuf.length, 0);
  const f = statBuf.subarray(0, n).toString().split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime
};
const wait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

say({ port: l.port });
for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'measure') {
    const [p0, t0] = [pauses, ticks()];
    await wait(1000);
    say({ paused: pauses - p0, ticks: ticks() - t0 });
  } else if (line === 'release') {
    const kept = pending.length - 10;
    for (const c of pending.splice(0, 10)) c.abort();
    for (let i = 0; i < 300 && pending.length < kept + 10; i++) await wait(10);
    say({ accepted: pending.length - kept });
  } else {
    break;
  }
}
for (const c of pending) c.abort();
l.close();
