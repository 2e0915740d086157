// Why `lb` could not do what it was asked, as one line an operator can act on: the cause, a stable code,
// what to do about it, and the sysexits code (which the unit's RestartPreventExitStatus= keys on). A Node
// stack trace helps only a developer, so it is printed only when LB_DEBUG is set.

import { dirname } from 'node:path';
import { userInfo } from 'node:os';
import { Code, Exit, LbError, type ErrorCode } from '../errors.ts';

export interface Failure {
  /** What went wrong, naming the path or address concerned. */
  message: string;
  code: ErrorCode;
  exitCode: number;
  /** What to do about it; null when the message says it all. */
  hint: string | null;
}

const ERRNO_TEXT: Readonly<Record<string, string>> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOENT: 'no such file or directory',
  ENOTDIR: 'a component of the path is not a directory',
  EISDIR: 'is a directory',
  EEXIST: 'already exists',
  ENOSPC: 'no space left on the device',
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'address not available on this host',
  EMFILE: 'too many open files',
  ENFILE: 'too many open files in the system',
};

const SYSCALL_TEXT: Readonly<Record<string, string>> = {
  mkdir: 'create directory',
  open: 'open',
  chmod: 'change the mode of',
  unlink: 'remove',
  rename: 'rename',
  bind: 'bind',
  listen: 'listen on',
  write: 'write',
};

function whoAmI(): string {
  try {
    return userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}`;
  }
}

/** The errno name inside an LbError message such as "cannot listen on 127.0.0.1:80: EACCES". */
function errnoIn(message: string): string | null {
  return /\b(E[A-Z]{2,})\b/.exec(message)?.[1] ?? null;
}

function bindHint(errno: string | null): string | null {
  switch (errno) {
    case 'EADDRINUSE':
      return 'another process is listening there (`ss -ltnp` shows which): stop it, or change the address in the config';
    case 'EACCES':
      return 'ports below 1024 need root or CAP_NET_BIND_SERVICE (the systemd unit grants it), or use a port above 1023';
    case 'EADDRNOTAVAIL':
      return 'that address is not on this host: fix the address in the config, or use ":PORT" for all addresses';
    default:
      return null;
  }
}

const PERMISSION = new Set(['EACCES', 'EPERM']);
const CANT_CREATE = new Set(['EROFS', 'ENOENT', 'ENOTDIR', 'EISDIR', 'EEXIST', 'ENOSPC']);

/** What to do about a file-system errno; `fix` names the path when it is known. */
function pathHint(errno: string, fix: string | null): string | null {
  if (PERMISSION.has(errno)) {
    return `lb runs as ${whoAmI()}, who may not write there: run it under its systemd unit (which creates /run/lb and /var/lib/lb for user lb), ${fix ? `${fix}, ` : ''}or set a path this user can write in the config`;
  }
  if (errno === 'EROFS') return 'the file system is read-only here (under the systemd unit only /run/lb and /var/lib/lb are writable): set a path there in the config';
  if (CANT_CREATE.has(errno)) return 'check the path in the config (and that its parent directory exists)';
  return null;
}

/** A system error on a path (the control socket's directory, a dump file, the state file, ...). */
function pathFailure(e: NodeJS.ErrnoException): Failure {
  const errno = e.code ?? 'EIO';
  const path = e.path ?? (e as { dest?: string }).dest ?? '?';
  const what = SYSCALL_TEXT[e.syscall ?? ''] ?? e.syscall ?? 'use';
  const message = `cannot ${what} ${path}: ${ERRNO_TEXT[errno] ?? errno} (${errno})`;
  const fix = e.syscall === 'mkdir' ? `create ${path} owned by this user` : `give this user write access to ${dirname(path)}`;
  if (PERMISSION.has(errno)) return { message, code: Code.STARTUP_PERMISSION, exitCode: Exit.NOPERM, hint: pathHint(errno, fix) };
  if (CANT_CREATE.has(errno)) return { message, code: Code.STARTUP_CANTCREAT, exitCode: Exit.CANTCREAT, hint: pathHint(errno, fix) };
  if (errno === 'EADDRINUSE' || errno === 'EADDRNOTAVAIL') {
    return { message, code: Code.BIND, exitCode: Exit.UNAVAILABLE, hint: bindHint(errno) };
  }
  return { message, code: Code.STARTUP_FAILED, exitCode: Exit.OSERR, hint: null };
}

/** Explains any error that ends an `lb` command. */
export function explainFailure(err: unknown): Failure {
  if (err instanceof LbError) {
    const errno = errnoIn(err.message);
    let hint: string | null = null;
    if (err.code === Code.BIND) hint = bindHint(errno);
    else if (err.code === Code.CONTROL_UNREACHABLE) {
      hint = 'is lb running, and is this its control address? (`lb ctl --config FILE` reads the address from the config)';
    } else if (errno) hint = pathHint(errno, null);
    // One rule for every thrower: a failure caused by a permission is EX_NOPERM, whatever else it is.
    const exitCode = errno && PERMISSION.has(errno) ? Exit.NOPERM : err.exitCode;
    return { message: err.message, code: err.code, exitCode, hint };
  }
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e === 'object' && typeof e.code === 'string' && /^E[A-Z]+$/.test(e.code) && typeof e.syscall === 'string') {
    return pathFailure(e);
  }
  return {
    message: `unexpected error: ${e instanceof Error ? e.message : String(err)}`,
    code: Code.INTERNAL,
    exitCode: Exit.INTERNAL,
    hint: 'this is a defect in lb: please report it with the output of the same command run with LB_DEBUG=1',
  };
}

/** The one line printed for a failure: `lb: MESSAGE [CODE]; HINT`. */
export function formatFailure(f: Failure): string {
  return `lb: ${f.message} [${f.code}]${f.hint ? `; ${f.hint}` : ''}`;
}

/** LB_DEBUG set to anything but "" or "0" asks for stack traces. */
export function debugEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.LB_DEBUG !== undefined && env.LB_DEBUG !== '' && env.LB_DEBUG !== '0';
}
