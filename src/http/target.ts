// The HTTP face's view of a running balancer that is a ControlTarget (the Runtime): commands go through
// the Telnet port's own dispatcher, so a button's answer is the text `enable`/`disable`/`drain` give there.

import type { Level } from '../control/access.ts';
import { execute, type ControlTarget, type Session } from '../control/commands.ts';
import type { HttpTarget } from './server.ts';

/** Runs one command line at `level`, as one Telnet line in a fresh session. */
export function commandRunner(t: ControlTarget): HttpTarget['runCommand'] {
  return async (level: Level, line: string) => {
    // The dispatcher checks the level as for a Telnet session; no `authenticate`: HTTP has its own login.
    const session: Session = { listener: t.table.listeners[0]?.name ?? '', group: 0, level, prompt: false };
    const reply = await execute(t, session, line);
    return reply.error ? { text: reply.text, error: reply.error } : { text: reply.text };
  };
}

/** The HttpTarget of a Runtime-like ControlTarget; `draining` says when a stop has begun. */
export function httpTargetOf(t: ControlTarget & { readonly startedAt: number }, draining: () => boolean): HttpTarget {
  return {
    // Read when used, so a field initializer of the Runtime may build this before startedAt is set.
    get startedAt() {
      return t.startedAt;
    },
    snapshot: () => t.snapshot(),
    draining,
    runCommand: commandRunner(t),
  };
}
