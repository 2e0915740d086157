// Client side of the control port: `lb ctl`, balance's `lb -c "CMD" PORT` and `lb -i PORT`.

import net, { type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Code, Exit, LbError } from '../errors.ts';
import { readToken } from './access.ts';

export type ControlAddress = { host: string; port: number } | { path: string };

const REPLY_TIMEOUT_MS = 10_000;

/** Where an instance started from balance's command line serves its control socket. */
export function balanceSocketPath(port: string, bind: string | undefined): string {
  const dir = process.env.XDG_RUNTIME_DIR ? join(process.env.XDG_RUNTIME_DIR, 'lb') : join(tmpdir(), `lb-${process.getuid?.() ?? 0}`);
  return join(dir, `lb.${port}${bind ? `.${bind.replace(/[^A-Za-z0-9.:_-]/g, '_')}` : ''}.sock`);
}

function connect(addr: ControlAddress): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = 'path' in addr ? net.connect(addr.path) : net.connect(addr.port, addr.host);
    const where = 'path' in addr ? addr.path : `${addr.host}:${addr.port}`;
    const timer = setTimeout(() => socket.destroy(new Error('ETIMEDOUT')), REPLY_TIMEOUT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new LbError(Code.CONTROL_UNREACHABLE, `cannot reach the control port at ${where}: ${err.code ?? err.message}`, Exit.UNAVAILABLE));
    });
  });
}

/**
 * Sends one command, half-closes, and returns the whole reply without its closing blank line. With a
 * token, `auth TOKEN` goes first (a TCP session starts at read); its reply is shown only if it failed.
 */
export async function sendCommand(addr: ControlAddress, command: string, opts: { token?: string } = {}): Promise<{ text: string; error: boolean }> {
  const reply = await exchange(addr, opts.token === undefined ? `${command}\n` : `auth ${opts.token}\n${command}\n`);
  if (opts.token === undefined) return reply;
  const end = reply.text.indexOf('\n\n');
  const auth = end < 0 ? reply.text : reply.text.slice(0, end);
  if (/^error:/.test(auth)) return { text: auth, error: true };
  const text = end < 0 ? '' : reply.text.slice(end + 2);
  return { text, error: /^error:/m.test(text.split('\n')[0] ?? '') };
}

/** Reads a token file for `lb ctl --token-file` (the same rules as the server's). */
export function clientToken(file: string): string {
  try {
    return readToken(file);
  } catch (err) {
    throw new LbError(Code.USAGE, (err as Error).message, Exit.NOINPUT);
  }
}

async function exchange(addr: ControlAddress, input: string): Promise<{ text: string; error: boolean }> {
  const socket = await connect(addr);
  return new Promise((resolve, reject) => {
    let data = '';
    socket.setEncoding('utf8');
    socket.setTimeout(REPLY_TIMEOUT_MS, () => socket.destroy(new Error('no reply in time')));
    socket.on('data', (d: string) => (data += d));
    socket.on('error', (err) => reject(new LbError(Code.CONTROL_UNREACHABLE, `control port: ${err.message}`, Exit.UNAVAILABLE)));
    socket.on('close', () => {
      const text = data.replace(/\n\n$/, '');
      resolve({ text, error: /^error:/m.test(text.split('\n')[0] ?? '') });
    });
    socket.end(input);
  });
}

/** balance's `-i`: a line-by-line shell over the control socket. */
export async function interactive(addr: ControlAddress, label: string, input = process.stdin, output = process.stdout): Promise<number> {
  const socket = await connect(addr);
  socket.setEncoding('utf8');
  output.write(`\nlb interactive command shell (${label})\n\n`);
  let buffered = '';
  let waiting: (() => void) | null = null;
  socket.on('data', (d: string) => {
    buffered += d;
    let end: number;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      output.write(buffered.slice(0, end + 1));
      buffered = buffered.slice(end + 2);
      waiting?.();
    }
  });
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.on('error', () => undefined);
  const rl = createInterface({ input, output, prompt: `lb[${label}]> `, terminal: Boolean((input as NodeJS.ReadStream).isTTY) });
  // Piped input closes readline at its end while earlier lines still await replies: prompt only while open.
  let inputClosed = false;
  rl.once('close', () => (inputClosed = true));
  rl.prompt();
  for await (const line of rl) {
    if (socket.destroyed) break;
    if (line.trim() !== '') {
      const replied = new Promise<void>((resolve) => (waiting = resolve));
      socket.write(`${line}\n`);
      await Promise.race([replied, closed]);
      waiting = null;
      if (socket.destroyed || /^\s*(quit|kill)\s*$/.test(line)) break;
    }
    if (!inputClosed) rl.prompt();
  }
  rl.close();
  socket.end();
  output.write('\n');
  return Exit.OK;
}
