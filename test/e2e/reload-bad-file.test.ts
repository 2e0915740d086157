// A reload can never take the serving path down (issue 11, items 7 and 8): SIGHUP on a real `lb` whose
// config file has been replaced by a FIFO with no writer, by a file with a 50 MB string value, or by a
// 5,000-level key. Each is a failed reload; the old table goes on serving; the data path and the control
// port answer while the reload runs (each round trip under 200 ms); a good file afterwards reloads.
// Before: the FIFO froze the data path and the control port until something wrote to it; the 50 MB
// string held the event loop 5.5 s and 1.85 GB; the deep key killed lb with a RangeError.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ask, backendOf, connectClient, echoServer } from '../helpers/backends.ts';
import { openSession } from '../helpers/control.ts';
import { cleanup, spawnLb } from '../helpers/lb.ts';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-reload-bad-'));
});
afterEach(async () => {
  await cleanup();
  rmSync(dir, { recursive: true, force: true });
});

function goodToml(backendPort: number, socket: string): string {
  return [
    '[global]',
    'drain_timeout = "1s"',
    '[control]',
    `socket = ${JSON.stringify(socket)}`,
    '[listeners.web]',
    'listen = "127.0.0.1:0"',
    'connect_timeout = "1s"',
    '[[listeners.web.groups]]',
    `backends = ["127.0.0.1:${backendPort}"]`,
    '',
  ].join('\n');
}

const badFiles: { what: string; make(file: string): void }[] = [
  {
    what: 'a FIFO with no writer in place of the file',
    make: (file) => {
      rmSync(file);
      execFileSync('mkfifo', [file]);
    },
  },
  {
    what: 'a 50 MB string value',
    make: (file) => execFileSync('sh', ['-c', `{ printf 'a = "'; head -c 50000000 /dev/zero | tr '\\0' x; printf '"\\n'; } > ${file}`]),
  },
  {
    what: 'a 5,000-level dotted key',
    make: (file) => writeFileSync(file, `${Array.from({ length: 5000 }, () => 'k').join('.')} = 1\n`),
  },
];

describe('a bad file on SIGHUP is a failed reload, never an outage', () => {
  it.each(badFiles)('$what', async ({ make }) => {
    const a = await echoServer('a', { prefix: true });
    const file = path.join(dir, 'lb.toml');
    const socket = path.join(dir, 'ctl.sock');
    writeFileSync(file, goodToml(a.port, socket));
    const lb = await spawnLb(['run', file]);
    const web = lb.ports.web!;
    const held = await connectClient(web);
    expect(await held.request('held')).toBe('[a] held');
    const control = await openSession(socket);
    expect(await control.command('show')).toMatch(/127\.0\.0\.1/);

    make(file);
    const mark = lb.logs.mark();
    const failed = lb.logs.waitFor('reload-failed', { ms: 15_000, from: mark });
    let reloadDone = false;
    void failed.then(() => (reloadDone = true), () => (reloadDone = true));
    lb.proc.kill('SIGHUP');

    // Round trips on the held connection and the control session until the reload has failed, and a
    // little longer (bounded by the 15 s wait above).
    const dataMs: number[] = [];
    const controlMs: number[] = [];
    let n = 0;
    for (let after = 0; after < 5 && n < 2000; n++) {
      let t0 = performance.now();
      expect(await held.request(`probe ${n}`, 2000)).toBe(`[a] probe ${n}`);
      dataMs.push(performance.now() - t0);
      t0 = performance.now();
      expect(await control.command('show', 2000)).toMatch(/127\.0\.0\.1/);
      controlMs.push(performance.now() - t0);
      if (reloadDone) after++;
    }
    const line = await failed;
    expect(line.level).toBe('error');
    expect(Math.max(...dataMs)).toBeLessThan(200);
    expect(Math.max(...controlMs)).toBeLessThan(200);

    // The old table still serves new connections; the process is alive; nothing "reloaded".
    expect(backendOf(await ask(web, 'new connection'))).toBe('a');
    expect(lb.proc.exitCode).toBeNull();
    expect(lb.logs.all('reloaded')).toHaveLength(0);

    // And reloads still work (a FIFO read left blocked would hold them up).
    rmSync(file, { force: true });
    writeFileSync(file, goodToml(a.port, socket));
    const mark2 = lb.logs.mark();
    lb.proc.kill('SIGHUP');
    await lb.logs.waitFor('reloaded', { ms: 15_000, from: mark2 });
    expect(await held.request('after')).toBe('[a] after');
    await control.close();
  });
});
