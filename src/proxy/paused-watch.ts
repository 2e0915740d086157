// Sockets the JS relay has paused, looked at until they flow again.
//
// The relay pauses a socket when the other side's write buffer is full (backpressure), and a queued
// client once it has sent QUEUED_BYTES_MAX. libuv then takes the socket out of its epoll set, so a reset
// that arrives meanwhile (or a keepalive failure) is not seen until the socket is read again: behind a
// backend that never reads, with idle_timeout = 0, never, and the connection keeps its slot for good.
// (The splice relay keeps every socket in its epoll set and sees EPOLLERR at once.)
//
// So every PAUSED_CHECK_MS each paused socket is asked for its peer's address. The kernel answers
// ENOTCONN once the connection has reached CLOSE, which a reset does at once, and it reads no byte and
// buffers nothing: a paused socket's unread bytes stay in the kernel, where backpressure wants them. A
// bounded resume (read a chunk, look for the error behind it) was the other way; it cannot see a reset
// behind more unread bytes than it may buffer. While lb's write side to the socket is open, CLOSE can
// only come from a reset or a timeout error, so the socket is destroyed with ECONNRESET and its relay
// ends as for any reset. A socket lb has already half-closed also reaches CLOSE on the peer's FIN, which
// must not cut the bytes still unread before it: such a socket is left alone, and a reset of it is
// seen when it flows again or at idle_timeout.
//
// One timer for the thread, running only while something is paused; one getpeername(2) per paused
// socket per check.

import type { Socket } from 'node:net';
import { constants } from 'node:os';

/** How often paused sockets are checked: a reset one gives its slot back within about this long. */
export const PAUSED_CHECK_MS = 250;

const UV_ENOTCONN = -constants.errno.ENOTCONN;

interface PeerHandle {
  getpeername(out: object): number;
}

const paused = new Set<Socket>();
let timer: NodeJS.Timeout | null = null;
/** getpeername fills it; its content is never read (no allocation per check). */
const scratch: Record<string, unknown> = {};

/** `socket` was just paused: check it until it is resumed or destroyed. */
export function watchPaused(socket: Socket): void {
  paused.add(socket);
  if (timer === null) {
    timer = setInterval(checkPaused, PAUSED_CHECK_MS);
    timer.unref();
  }
}

function checkPaused(): void {
  for (const socket of paused) {
    if (socket.destroyed || !socket.isPaused()) {
      paused.delete(socket);
      continue;
    }
    if (socket.writableEnded) continue;
    // Node's handle (TCPWrap): the public remoteAddress is cached from the first call.
    const handle = (socket as unknown as { _handle?: PeerHandle | null })._handle;
    if (!handle || typeof handle.getpeername !== 'function') continue;
    if (handle.getpeername(scratch) !== UV_ENOTCONN) continue;
    paused.delete(socket);
    socket.destroy(Object.assign(new Error('read ECONNRESET (seen while paused)'), { code: 'ECONNRESET', errno: -constants.errno.ECONNRESET, syscall: 'read' }));
  }
  if (paused.size === 0 && timer !== null) {
    clearInterval(timer);
    timer = null;
  }
}
