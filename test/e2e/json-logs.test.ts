// `log_format = "json"`: every line lb writes on stderr is one JSON object, the start-up and stop lines and
// config warnings included, so a log shipper never meets a line it cannot parse. `log_level` drops the
// events below it; the access log follows `access_log` alone. The real CLI process, real sockets.

import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { CLI, run, useControlScope } from '../helpers/control.ts';
import { within } from '../helpers/backends.ts';

const scope = useControlScope();

async function echoServer(): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, close: () => new Promise((r) => server.close(() => r())) };
}

/** One connection through lb: sends a line, waits for the echo, closes. */
async function oneConnection(port: number): Promise<void> {
  const c = net.connect(port, '127.0.0.1');
  c.on('error', () => undefined);
  try {
    await within(new Promise<void>((resolve) => c.once('connect', resolve)), 3000, 'connect to lb');
    c.write('ping\n');
    await within(new Promise<void>((resolve) => c.once('data', () => resolve())), 3000, 'the echo through lb');
  } finally {
    c.end();
  }
}

async function runJsonLb(global: string, backend: number) {
  const dir = scope.scratch();
  const file = dir.write(
    'json.toml',
    [
      '[global]',
      'log_format = "json"',
      global,
      'drain_timeout = "0"',
      '[listeners.web]',
      'listen = "127.0.0.1:0"',
      'packet_dump_file = "/dev/null"', // a warning at start: packet_dump is off
      '[[listeners.web.groups]]',
      `backends = [{ name = "echo1", host = "127.0.0.1", port = ${backend} }]`,
      '',
    ].join('\n'),
  );
  const p = run(process.execPath, [CLI, 'run', file]);
  const text = await p.waitOutput((t) => /"event":"listening"/.test(t), 10_000, 'the JSON start-up line', 'stderr');
  const started = JSON.parse(text.split('\n').find((l) => l.includes('"event":"listening"'))!) as Record<string, unknown>;
  const port = Number(/=.*:(\d+)$/.exec(String(started.listeners))![1]);
  return { p, port, started };
}

const lines = (stderr: string): string[] => stderr.split('\n').filter((l) => l !== '');

describe('log_format = "json"', () => {
  it('writes every stderr line as JSON: the warning, the start-up line, the access log, the stop', async () => {
    const echo = await echoServer();
    try {
      const { p, port, started } = await runJsonLb('', echo.port);
      expect(started).toMatchObject({ level: 'info', event: 'listening', version: expect.any(String), pid: p.proc.pid });
      await oneConnection(port);
      await p.waitOutput((t) => /"event":"conn"/.test(t), 3000, 'the access-log line', 'stderr');
      p.proc.kill('SIGTERM');
      const end = await within(p.exited, 10_000, 'lb to stop');
      expect(end.code).toBe(0);
      const all = lines(end.stderr);
      const parsed = all.map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          throw new Error(`not JSON: ${l}`);
        }
      });
      expect(parsed.map((o) => o.event)).toEqual(['config', 'listening', 'conn', 'stopping', 'stopped']);
      expect(parsed[0]).toMatchObject({ level: 'warn', code: 'LB_CONFIG_VALUE', path: 'listeners.web.packet_dump_file', line: 7 });
      // The backend by its name, the address lb connected to as its own field.
      expect(parsed[2]).toMatchObject({ listener: 'web', backend: 'echo1', backend_addr: `127.0.0.1:${echo.port}` });
      expect(parsed.every((o) => typeof o.time === 'string' && typeof o.level === 'string')).toBe(true);
    } finally {
      await echo.close();
    }
  });

  it('log_level = "warn" drops info events but keeps the access log, the start-up and the stop lines', async () => {
    const echo = await echoServer();
    try {
      const { p, port } = await runJsonLb('log_level = "warn"', echo.port);
      await oneConnection(port);
      await p.waitOutput((t) => /"event":"conn"/.test(t), 3000, 'the access-log line', 'stderr');
      p.proc.kill('SIGTERM');
      const end = await within(p.exited, 10_000, 'lb to stop');
      expect(lines(end.stderr).map((l) => (JSON.parse(l) as { event: string }).event)).toEqual(['config', 'listening', 'conn', 'stopped']);
    } finally {
      await echo.close();
    }
  });
});
