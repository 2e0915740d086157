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
  BIND: 'LB_BIND',
  NO_BACKEND: 'LB_NO_BACKEND',
  CONNECT_FAILED: 'LB_CONNECT_FAILED',
  CONTROL_UNKNOWN_COMMAND: 'LB_CONTROL_UNKNOWN_COMMAND',
  CONTROL_BAD_ARGS: 'LB_CONTROL_BAD_ARGS',
  CONTROL_NOT_ADMIN: 'LB_CONTROL_NOT_ADMIN',
  CONTROL_DENIED: 'LB_CONTROL_DENIED',
  CONTROL_IDLE: 'LB_CONTROL_IDLE',
  CONTROL_UNREACHABLE: 'LB_CONTROL_UNREACHABLE',
  RELOAD_FAILED: 'LB_RELOAD_FAILED',
} as const;
export type ErrorCode = (typeof Code)[keyof typeof Code];

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
