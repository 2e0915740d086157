// Active health checks: one timer per checked backend, never on the data path.
//
// Each backend's first check comes at a random point of its first interval, so a restart does not send
// every check at once; afterwards each runs `interval` after the previous one started. Checks run in
// parallel, each with its own timeout (balance.fm ran command checks one after another, with none).

import net, { type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { BackendState } from '../balance/state.ts';
import { checkSendProxyOf, type BackendEntry, type HealthEntry, type ListenerEntry, type ProxyVersion } from '../config/table.ts';
import { encodeProxyHeader } from '../proxy/proxy-protocol.ts';
import { LOCAL_ERRORS } from '../errors.ts';
import type { Logger } from '../log.ts';
import { LogBurst } from '../log-burst.ts';
import type { CheckResult, CheckStatus } from './state.ts';

const MAX_REPLY_BYTES = 16 * 1024;

/** A local resource error is logged at most once per this many ms. */
const LOCAL_ERROR_LOG_MS = 5000;

/**
 * Feeds one check result to a backend's shared rise/fall machine and logs a transition; true when the
 * backend went up or down. Checks run once per backend, here on the main thread, whatever the number
 * of workers: they all read the result from the shared state.
 */
export function applyCheck(
  log: Logger,
  listener: string,
  group: number,
  entry: BackendEntry,
  st: BackendState,
  result: CheckResult,
  source: 'check' | 'traffic',
): boolean {
  const h = entry.health;
  if (!h) return false;
  if (!result.ok) st.lastFailure = result.detail;
  const change = st.shared.recordCheck(st.slot, result, h.rise, h.fall, Date.now());
  if (!change) return false;
  log.log(change.to === 'UP' ? 'info' : 'warn', 'health', {
    listener,
    group,
    backend: entry.key,
    from: change.from,
    to: change.to,
    status: result.status,
    reason: result.detail || undefined,
    check_ms: Math.round(result.durationMs),
    by: source,
  });
  return true;
}

interface Checked {
  listener: ListenerEntry;
  group: number;
  entry: BackendEntry;
  state: BackendState;
  timer: NodeJS.Timeout | null;
  socket: Socket | null;
}

export class HealthMonitor {
  private readonly checked = new Map<BackendState, Checked>();
  private readonly log: Logger;
  private readonly changed: () => void;
  private readonly random: () => number;

  /** `changed` runs after a backend went up or down (so queued clients can use a backend that came up). */
  constructor(log: Logger, changed: () => void, random: () => number = Math.random) {
    this.log = log;
    this.changed = changed;
    this.random = random;
  }

  /** Follows a new table: starts checks for new backends, updates kept ones, stops removed ones. */
  sync(views: readonly { entry: ListenerEntry; groups: readonly { backends: readonly BackendState[] }[] }[]): void {
    const seen = new Set<BackendState>();
    for (const { entry: listener, groups } of views) {
      listener.groups.forEach((g, gi) => {
        g.backends.forEach((entry, bi) => {
          const state = groups[gi]?.backends[bi];
          if (!state) return;
          if (!entry.health) {
            if (!state.checkUp) state.shared.forgetChecks(state.slot, Date.now());
            return;
          }
          if (!entry.enabled) return; // operator-disabled (DIS) backends are not checked
          if (entry.resolveError !== undefined) return; // no address to check yet (down until it resolves)
          seen.add(state);
          const c = this.checked.get(state);
          if (c) {
            c.listener = listener;
            c.group = gi;
            c.entry = entry;
          } else {
            const fresh: Checked = { listener, group: gi, entry, state, timer: null, socket: null };
            this.checked.set(state, fresh);
            this.schedule(fresh, this.random() * entry.health.intervalMs);
          }
        });
      });
    }
    for (const [state, c] of this.checked) if (!seen.has(state)) this.stopOne(c);
  }

  stop(): void {
    for (const c of this.checked.values()) this.stopOne(c);
  }

  /** Told of every failed check (for `show errors`). */
  onFailure: ((listener: string, group: number, entry: BackendEntry, result: CheckResult) => void) | null = null;
  private readonly localErrors = new LogBurst(LOCAL_ERROR_LOG_MS);
  private localError(code: string): void {
    const count = this.localErrors.hit();
    if (count === 0) return;
    this.log.log('error', 'local-resource-error', {
      code,
      count,
      detail: 'a health check could not open a socket on this host: the backend is not marked down; raise LimitNOFILE',
    });
  }

  private stopOne(c: Checked): void {
    if (c.timer) clearTimeout(c.timer);
    c.socket?.destroy();
    this.checked.delete(c.state);
  }

  private schedule(c: Checked, delayMs: number): void {
    c.timer = setTimeout(() => {
      c.timer = null;
      const started = performance.now();
      const group = c.listener.groups[c.group];
      const proxy = group ? checkSendProxyOf(group, c.entry) : null;
      runCheck(c.entry, c.entry.health!, c.listener.source, (socket) => (c.socket = socket), (result) => {
        c.socket = null;
        if (this.checked.get(c.state) !== c) return; // stopped meanwhile
        if (!result.ok && LOCAL_ERRORS.has(result.detail)) {
          // Out of file descriptors (or memory) here: says nothing about the backend. Not counted, logged
          // once per burst, checked again at the next interval.
          this.localError(result.detail);
        } else {
          if (!result.ok) this.onFailure?.(c.listener.name, c.group, c.entry, result);
          if (applyCheck(this.log, c.listener.name, c.group, c.entry, c.state, result, 'check')) this.changed();
        }
        const h = c.entry.health;
        if (h) this.schedule(c, Math.max(0, h.intervalMs - (performance.now() - started)));
      }, proxy);
    }, delayMs);
    c.timer.unref();
  }
}

/**
 * One check: connect, optionally send, optionally wait for the expected reply; always ends in `done`.
 * With `proxy` (check_send_proxy) a PROXY header goes first: v1 carries the check connection's own
 * addresses (the spec's advice for checks), v2 is a LOCAL header (the receiver keeps the real ones).
 */
export function runCheck(
  entry: BackendEntry,
  h: HealthEntry,
  source: string | null,
  started: (socket: Socket) => void,
  done: (result: CheckResult) => void,
  proxy: ProxyVersion | null = null,
): void {
  const t0 = performance.now();
  const expect = h.expect;
  // The reply is matched as bytes (text) or as UTF-8 (regex): `send` and `expect` are UTF-8 on the wire.
  const regex = expect && 'regex' in expect ? new RegExp(expect.regex, expect.flags) : null;
  const needle = expect && 'text' in expect ? Buffer.from(expect.text, 'utf8') : null;
  let reply = Buffer.alloc(0);
  let connected = false;
  let finished = false;
  const socket = net.connect({ host: entry.address, port: h.port ?? entry.port, localAddress: source ?? undefined });
  started(socket);
  const finish = (ok: boolean, status: CheckStatus, detail = ''): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.destroy();
    done({ ok, status, durationMs: performance.now() - t0, detail });
  };
  const timer = setTimeout(() => finish(false, connected ? 'L7TOUT' : 'L4TOUT', 'timeout'), h.timeoutMs);
  socket.on('connect', () => {
    connected = true;
    if (proxy !== null) {
      const own = { srcAddr: socket.localAddress ?? '', srcPort: socket.localPort ?? 0, dstAddr: socket.remoteAddress ?? '', dstPort: socket.remotePort ?? 0 };
      socket.write(encodeProxyHeader(proxy, proxy === 'v1' ? own : null));
    }
    if (h.send !== null) socket.write(h.send);
    if (!expect) {
      if (h.send === null && proxy === null) finish(true, 'L4OK');
      else socket.write('', () => finish(true, 'L4OK'));
    }
  });
  socket.on('data', (chunk: Buffer) => {
    reply = Buffer.concat([reply, chunk]).subarray(0, MAX_REPLY_BYTES);
    const matched = regex ? regex.test(reply.toString('utf8')) : needle !== null && reply.includes(needle);
    if (matched) finish(true, 'L7OK');
    else if (reply.length >= MAX_REPLY_BYTES) finish(false, 'L7RSP', 'reply did not match');
  });
  socket.on('end', () => finish(false, 'L7RSP', reply.length === 0 ? 'closed without a reply' : 'reply did not match'));
  socket.on('error', (err: NodeJS.ErrnoException) => finish(false, connected ? 'SOCKERR' : 'L4CON', err.code ?? err.message));
}
