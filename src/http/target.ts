// The HTTP face's view of a running balancer that is a ControlTarget (the Runtime): commands go through
// the Telnet port's own dispatcher, so a button's answer is the text `enable`/`disable`/`drain` give there.

import { levelAllows, type Level } from '../control/access.ts';
import { execute, type ControlTarget, type Session } from '../control/commands.ts';
import type { HttpTarget } from './server.ts';

/** Runs one command line at `level`, as one Telnet line in a fresh session. */
export function commandRunner(t: ControlTarget): HttpTarget['runCommand'] {
  return async (level: Level, line: string) => {
    // The page sends only enable/disable/drain, which need `operator`. Until the dispatcher checks levels
    // itself, `admin` carries "may steer"; `level` is there for when it does.
    const session = { listener: t.table.listeners[0]?.name ?? '', group: 0, admin: levelAllows(level, 'operator'), level, prompt: false } as Session;
    const reply = await execute(t, session, line);
    return reply.error ? { text: reply.text, error: reply.error } : { text: reply.text };
  };
}

/** The HttpTarget of a Runtime-like ControlTarget; `draining` says when a stop has begun. */
export function httpTargetOf(t: ControlTarget & { readonly startedAt: number }, draining: () => boolean): HttpTarget {
  return {
    startedAt: t.startedAt,
    snapshot: () => t.snapshot(),
    draining,
    runCommand: commandRunner(t),
  };
}
