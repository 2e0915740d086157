// Readiness for systemd (lb.service is Type=notify): READY=1 once every listener is bound, so that
// `systemctl start lb` fails when lb cannot bind instead of reporting a start and then an exit.
//
// The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET, and Node has no AF_UNIX
// datagram sockets; `systemd-notify --ready` sends it for us, as a child process (the unit therefore
// says NotifyAccess=all). It also waits until systemd has taken the message (a barrier), so the message
// is attributed to lb's unit even though the child exits at once.

import { execFile } from 'node:child_process';
import { Code } from '../errors.ts';

/** How long systemd-notify may take: its own barrier waits up to 5 s. */
const NOTIFY_TIMEOUT_MS = 10_000;

export interface NotifyFailure {
  code: typeof Code.NOTIFY_FAILED;
  /** Why, for a log field. */
  error: string;
  /** The one line for a text log. */
  text: string;
}

/**
 * Tells the service manager lb is ready, when one asked ($NOTIFY_SOCKET set); otherwise does nothing.
 * Never throws: a failure goes to `onFailure` (systemd then fails the start on its timeout). Resolves
 * true when the notification was sent. Also sent when a reload is over (after `notifyReloading`).
 */
export function notifyReady(onFailure: (f: NotifyFailure) => void, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  return notify(['--ready'], 'lb is ready', onFailure, env);
}

/**
 * A reload begins: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, as `Type=notify-reload` expects it),
 * so that `systemctl reload` waits for the READY=1 that follows.
 */
export function notifyReloading(onFailure: (f: NotifyFailure) => void, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  // process.hrtime is CLOCK_MONOTONIC on Linux, in nanoseconds.
  const usec = process.hrtime.bigint() / 1000n;
  return notify(['RELOADING=1', `MONOTONIC_USEC=${usec}`], 'lb is reloading', onFailure, env);
}

function notify(args: string[], what: string, onFailure: (f: NotifyFailure) => void, env: NodeJS.ProcessEnv): Promise<boolean> {
  if (!env.NOTIFY_SOCKET) return Promise.resolve(false);
  return new Promise((resolve) => {
    execFile('systemd-notify', args, { env, timeout: NOTIFY_TIMEOUT_MS }, (err, _stdout, stderr) => {
      if (!err) return resolve(true);
      const error = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'systemd-notify is not installed' : stderr.trim() || err.message;
      onFailure({ code: Code.NOTIFY_FAILED, error, text: `lb: could not tell systemd that ${what}: ${error} [${Code.NOTIFY_FAILED}]` });
      resolve(false);
    });
  });
}
