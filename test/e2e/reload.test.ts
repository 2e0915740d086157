// SIGHUP on the real CLI: a good file is swapped in (a new listener starts and carries traffic to its
// backend; existing listeners and connections go on), a broken file is refused and the old table keeps
// serving, with the error logged.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ask, backendOf, connectClient, echoServer, freePort } from '../helpers/backends.ts';
import { cleanup, spawnLb } from '../helpers/lb.ts';

let dir = '';
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'lb-reload-'));
});
afterEach(async () => {
  await cleanup();
  rmSync(dir, { recursive: true, force: true });
});

function listenerToml(name: string, listen: string, backends: number[]): string {
  return [
    `[listeners.${name}]`,
    `listen = "${listen}"`,
    'connect_timeout = "1s"',
    `[[listeners.${name}.groups]]`,
    'policy = "rr"',
    `backends = [${backends.map((p) => `"127.0.0.1:${p}"`).join(', ')}]`,
    '',
  ].join('\n');
}

const GLOBAL = '[global]\ndrain_timeout = "2s"\n\n';

describe('SIGHUP reload', () => {
  it('a good file adds a listener; traffic flows to its backend; the old listener and its connections go on', async () => {
    const a = await echoServer('a', { prefix: true });
    const b = await echoServer('b', { prefix: true });
    const file = path.join(dir, 'lb.toml');
    writeFileSync(file, GLOBAL + listenerToml('web', '127.0.0.1:0', [a.port]));
    const lb = await spawnLb(['run', file]);
    const web = lb.ports.web!;
    expect(backendOf(await ask(web, 'before'))).toBe('a');
    const open = await connectClient(web);
    expect(await open.request('held')).toBe('[a] held');

    // The new listener needs a port we know in advance: a free one (tiny race: something else could
    // bind it between our probe and lb's bind; then this test fails with a reload-failed line).
    const apiPort = await freePort();
    writeFileSync(file, GLOBAL + listenerToml('web', '127.0.0.1:0', [a.port]) + listenerToml('api', `127.0.0.1:${apiPort}`, [b.port]));
    lb.proc.kill('SIGHUP');
    const reloaded = await lb.logs.waitFor('reloaded', { ms: 5000 });
    expect(reloaded.fields.listeners).toBe('2');
    expect(backendOf(await ask(apiPort, 'new'))).toBe('b');
    expect(backendOf(await ask(web, 'old'))).toBe('a');
    expect(await open.request('still here')).toBe('[a] still here');
    expect(lb.logs.all('reload-failed')).toHaveLength(0);
  });

  it('a broken file is refused: the error is logged and the old table keeps serving', async () => {
    const a = await echoServer('a', { prefix: true });
    const file = path.join(dir, 'lb.toml');
    writeFileSync(file, GLOBAL + listenerToml('web', '127.0.0.1:0', [a.port]));
    const lb = await spawnLb(['run', file]);
    const web = lb.ports.web!;
    const open = await connectClient(web);
    expect(await open.request('held')).toBe('[a] held');

    // A syntax error, then (second round) a file that parses but does not validate.
    writeFileSync(file, GLOBAL + listenerToml('web', '127.0.0.1:0', [a.port]) + '[listeners.api\nlisten = \n');
    lb.proc.kill('SIGHUP');
    const failed = await lb.logs.waitFor('reload-failed', { ms: 5000 });
    expect(failed.level).toBe('error');
    expect(failed.fields.file).toBe(file);
    expect(backendOf(await ask(web, 'after broken reload'))).toBe('a');
    expect(await open.request('still here')).toBe('[a] still here');

    writeFileSync(file, GLOBAL + listenerToml('web', '127.0.0.1:0', [a.port]).replace('policy = "rr"', 'policy = "roundabout"'));
    const mark = lb.logs.mark();
    lb.proc.kill('SIGHUP');
    await lb.logs.waitFor('reload-failed', { ms: 5000, from: mark });
    await lb.logs.waitForRaw(/roundabout/, 5000); // the diagnostic names the bad value
    expect(backendOf(await ask(web, 'after invalid reload'))).toBe('a');
    expect(lb.logs.all('reloaded')).toHaveLength(0);
    expect(lb.proc.exitCode).toBeNull();
  });

  it('removing a listener: it stops accepting, the reload completes, its open connection goes on', async () => {
    const a = await echoServer('a', { prefix: true });
    const b = await echoServer('b', { prefix: true });
    const file = path.join(dir, 'lb.toml');
    writeFileSync(file, GLOBAL + listenerToml('web', '127.0.0.1:0', [a.port]) + listenerToml('api', '127.0.0.1:0', [b.port]));
    const lb = await spawnLb(['run', file]);
    const open = await connectClient(lb.ports.api!);
    expect(await open.request('held')).toBe('[b] held');

    writeFileSync(file, GLOBAL + listenerToml('web', '127.0.0.1:0', [a.port]));
    lb.proc.kill('SIGHUP');
    // The swap must not wait for the removed listener's connections to end.
    await lb.logs.waitFor('reloaded', { ms: 2000 });
    await expect(connectClient(lb.ports.api!)).rejects.toThrow(/ECONNREFUSED/);
    expect(await open.request('still relayed')).toBe('[b] still relayed');
    expect(backendOf(await ask(lb.ports.web!, 'web'))).toBe('a');
  });
});
