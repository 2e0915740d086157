// Stable error codes and process exit codes.
//
// Codes are part of the product: log lines, control-port replies and `lb --check` output carry them so
// operators and scripts can match on them. Never reuse a retired code for a different meaning.

/** BSD sysexits values: systemd prints them by name and units can exclude them from restarts. */
export const Exit = {
  OK: 0,
  SOFTWARE: 1,
  USAGE: 64,
  NOINPUT: 66,
  UNAVAILABLE: 69,
  /** EX_SOFTWARE: an internal error (a defect), as opposed to `SOFTWARE` = 1, "the command failed". */
  INTERNAL: 70,
  /** EX_OSERR: the system refused something that is not about files or permissions (e.g. EMFILE). */
  OSERR: 71,
  /** EX_CANTCREAT: a file or directory lb must create cannot be (read-only file system, missing parent). */
  CANTCREAT: 73,
  NOPERM: 77,
  CONFIG: 78,
} as const;

export const Code = {
  USAGE: 'LB_USAGE',
  CONFIG_UNREADABLE: 'LB_CONFIG_UNREADABLE',
  CONFIG_SYNTAX: 'LB_CONFIG_SYNTAX',
  CONFIG_SCHEMA: 'LB_CONFIG_SCHEMA',
  CONFIG_UNKNOWN_KEY: 'LB_CONFIG_UNKNOWN_KEY',
  CONFIG_VALUE: 'LB_CONFIG_VALUE',
  CONFIG_DUPLICATE_LISTEN: 'LB_CONFIG_DUPLICATE_LISTEN',
  CONFIG_EMPTY_GROUP: 'LB_CONFIG_EMPTY_GROUP',
  CONFIG_RESOLVE: 'LB_CONFIG_RESOLVE',
  /** The file is larger than the config size limit (see src/config/limits.ts). */
  CONFIG_TOO_LARGE: 'LB_CONFIG_TOO_LARGE',
  /** Keys, tables or arrays nested deeper than the config depth limit. */
  CONFIG_TOO_DEEP: 'LB_CONFIG_TOO_DEEP',
  /** The path is not a regular file (a FIFO, a device, a directory): a reload refuses to read it. */
  CONFIG_NOT_FILE: 'LB_CONFIG_NOT_FILE',
  /** Loading the file in its worker ran out of its time or memory budget. */
  CONFIG_BUDGET: 'LB_CONFIG_BUDGET',
  /** The config worker failed in an unexpected way (a bug: the running table is kept). */
  CONFIG_WORKER: 'LB_CONFIG_WORKER',
  /** More listeners, groups or backends than one table may have (src/config/limits.ts): from the file, a reload or DNS discovery. */
  TABLE_LIMIT: 'LB_TABLE_LIMIT',
  BIND: 'LB_BIND',
  NO_BACKEND: 'LB_NO_BACKEND',
  CONNECT_FAILED: 'LB_CONNECT_FAILED',
  /** accept_proxy: a client sent no valid PROXY header within the timeout (malformed, truncated, too slow). */
  PROXY_HEADER: 'LB_PROXY_HEADER',
  /** `[global] maxconn` reached on a listener Node accepts for (it cannot pause): clients closed at once. */
  MAXCONN: 'LB_MAXCONN',
  CONTROL_UNKNOWN_COMMAND: 'LB_CONTROL_UNKNOWN_COMMAND',
  CONTROL_BAD_ARGS: 'LB_CONTROL_BAD_ARGS',
  CONTROL_NOT_ADMIN: 'LB_CONTROL_NOT_ADMIN',
  CONTROL_DENIED: 'LB_CONTROL_DENIED',
  CONTROL_IDLE: 'LB_CONTROL_IDLE',
  CONTROL_UNREACHABLE: 'LB_CONTROL_UNREACHABLE',
  /** A control session exceeded what it may buffer (input or unread output) and was closed. */
  CONTROL_FLOOD: 'LB_CONTROL_FLOOD',
  /** A control client broke the Telnet protocol beyond repair (an endless subnegotiation): its session was closed. */
  CONTROL_TELNET: 'LB_CONTROL_TELNET',
  /** `auth` with a wrong token, or on a port without `token_file`. */
  CONTROL_AUTH: 'LB_CONTROL_AUTH',
  /** A reload moved the control port or socket: a session of the old one got its last reply, then was closed. */
  CONTROL_MOVED: 'LB_CONTROL_MOVED',
  /** The control socket's path or directory is unsafe or in use by a running instance. */
  CONTROL_SOCKET: 'LB_CONTROL_SOCKET',
  RELOAD_FAILED: 'LB_RELOAD_FAILED',
  STATE_UNREADABLE: 'LB_STATE_UNREADABLE',
  STATE_INVALID: 'LB_STATE_INVALID',
  STATE_WRITE: 'LB_STATE_WRITE',
  SAVE_FORBIDDEN: 'LB_SAVE_FORBIDDEN',
  STARTUP_PERMISSION: 'LB_STARTUP_PERMISSION',
  STARTUP_CANTCREAT: 'LB_STARTUP_CANTCREAT',
  STARTUP_FAILED: 'LB_STARTUP_FAILED',
  /** READY=1 could not be sent to systemd (lb.service is Type=notify: the start then times out). */
  NOTIFY_FAILED: 'LB_NOTIFY_FAILED',
  /** The splice relay cannot be used here (addon not built or not loadable, kernel refuses, turned off). */
  SPLICE_UNAVAILABLE: 'LB_SPLICE_UNAVAILABLE',
  /** A socket cannot be handed to the splice relay (bytes already buffered in JS, not connected). */
  SPLICE_HANDOVER: 'LB_SPLICE_HANDOVER',
  /** An unforeseen exception inside one control or HTTP session: that session was closed, lb went on. */
  SESSION_FAILED: 'LB_SESSION_FAILED',
  INTERNAL: 'LB_INTERNAL',
} as const;
export type ErrorCode = (typeof Code)[keyof typeof Code];

/**
 * Socket errors that say this host ran out of something (descriptors, memory, ephemeral ports), not that
 * a backend is bad: never counted against a backend, by the data path or by health checks.
 */
export const LOCAL_ERRORS: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM', 'EADDRNOTAVAIL']);

export class LbError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: number;
  constructor(code: ErrorCode, message: string, exitCode: number = Exit.SOFTWARE) {
    super(message);
    this.name = 'LbError';
    this.code = code;
    this.exitCode = exitCode;
  }
}
