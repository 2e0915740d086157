// The data-plane workers, as the supervisor sees them: started, asked, replaced when they die.
//
// A table change is two-phase across all workers: each binds what the new table adds (stage), and only
// when every one of them succeeded do they all switch (commit); otherwise they all drop what they bound
// (abort), so a failed reload changes nothing anywhere. A worker that dies (an uncaught exception in the
// data path) is logged with its stack and replaced with the current table; its slots and queue places
// are given back and its counts kept (SharedState.workerGone). The main thread never serves traffic, so
// nothing a client does to a worker can take the control port down.

import { Worker } from 'node:worker_threads';
import type { RoutingTable } from '../config/table.ts';
import { entryUrl } from '../entries.ts';
import { LbError, Code, Exit } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { SlotMap } from '../shared/slots.ts';
import type { SharedState } from '../shared/state.ts';
import { wakeLimited } from '../proxy/conn-limit.ts';
import type { Event, Reply, Request, WorkerInit } from '../worker/protocol.ts';

type Body = Request extends infer R ? (R extends { seq: number } ? Omit<R, 'seq'> : never) : never;

/** Longest a worker may take to start and bind before start-up gives up. */
const START_MS = 15_000;

interface Member {
  region: number;
  worker: Worker;
  seq: number;
  pending: Map<number, (r: Reply) => void>;
  ready: boolean;
  /** Set when the supervisor ends it on purpose (shutdown): its exit is not a death. */
  retiring: boolean;
}

export interface PoolEvents {
  failure(slot: number, reason: string): void;
  healthChanged(): void;
}

export class WorkerPool {
  readonly size: number;
  restarts = 0;
  /** Whether the workers can splice (what the last worker to start found), for `show info`. */
  splice: { ok: true } | { ok: false; reason: string } = { ok: false, reason: 'no worker started' };
  /** Whether the workers connect to backends in the addon on the splice path (likewise). */
  nativeConnect: { ok: true } | { ok: false; reason: string } = { ok: false, reason: 'no worker started' };
  nativeAccept: { ok: true } | { ok: false; reason: string } = { ok: false, reason: 'no worker started' };
  private readonly shared: SharedState;
  private readonly log: Logger;
  private readonly events: PoolEvents;
  private readonly testHooks: boolean;
  private readonly reusePort: boolean;
  private members: Member[] = [];
  /** What a replacement starts with: the committed table. */
  private current: { table: RoutingTable; slots: SlotMap; ports: Record<string, number> } | null = null;
  private stopped = false;

  constructor(opts: { size: number; shared: SharedState; log: Logger; events: PoolEvents; testHooks: boolean; reusePort: boolean }) {
    this.size = opts.size;
    this.shared = opts.shared;
    this.log = opts.log;
    this.events = opts.events;
    this.testHooks = opts.testHooks;
    this.reusePort = opts.reusePort;
  }

  /** Starts every worker on `table`; rejects (every worker stopped) if any cannot bind. */
  async start(table: RoutingTable, slots: SlotMap, ports: Record<string, number>): Promise<void> {
    this.current = { table, slots, ports };
    const started = Array.from({ length: this.size }, (_, region) => this.spawn(region));
    try {
      await Promise.all(started);
    } catch (err) {
      await this.terminate();
      throw err;
    }
  }

  private spawn(region: number): Promise<void> {
    const cur = this.current!;
    const init: WorkerInit = {
      shared: this.shared.init(),
      region,
      regions: this.shared.regions,
      table: cur.table,
      slots: cur.slots,
      ports: cur.ports,
      reusePort: this.reusePort,
      testHooks: this.testHooks,
    };
    const worker = new Worker(entryUrl('data-plane'), { workerData: init, name: `lb-worker-${region}` });
    const m: Member = { region, worker, seq: 0, pending: new Map(), ready: false, retiring: false };
    this.members[region] = m;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new LbError(Code.BIND, `worker ${region} did not start within ${START_MS} ms`, Exit.SOFTWARE)), START_MS);
      worker.on('message', (msg: Event | Reply) => {
        if (msg.t === 'ready') {
          this.splice = msg.splice;
          this.nativeConnect = msg.nativeConnect;
          this.nativeAccept = msg.nativeAccept;
          clearTimeout(timer);
          m.ready = true;
          resolve();
        } else if (msg.t === 'reply') {
          if (msg.seq === 0 && !msg.ok) {
            clearTimeout(timer);
            reject(new LbError(Code.BIND, msg.error, msg.exitCode ?? Exit.UNAVAILABLE));
            return;
          }
          const done = m.pending.get(msg.seq);
          m.pending.delete(msg.seq);
          done?.(msg);
        } else if (msg.t === 'log') this.log.lines(msg.text);
        else if (msg.t === 'failure') this.events.failure(msg.slot, msg.reason);
        else if (msg.t === 'health') this.events.healthChanged();
      });
      worker.on('error', (err) => {
        this.log.log('error', 'worker-died', { worker: region, error: err.message, stack: err.stack ?? '' });
      });
      worker.on('exit', (code) => {
        clearTimeout(timer);
        if (!m.ready) reject(new LbError(Code.BIND, `worker ${region} exited (${code}) while starting`, Exit.SOFTWARE));
        for (const done of m.pending.values()) done({ t: 'reply', seq: -1, ok: false, error: 'worker exited' });
        m.pending.clear();
        if (m.retiring || this.stopped || !m.ready || this.members[region] !== m) return;
        this.replace(m, code);
      });
    });
  }

  /** A worker died: give back what it held, keep its counts, start another in its place. */
  private replace(dead: Member, code: number): void {
    this.restarts++;
    const cur = this.current!;
    const listeners = cur.slots.listeners.map((l) => l.slot);
    const backends = cur.slots.listeners.flatMap((l) => l.groups.flatMap((g) => g.backends));
    this.shared.workerGone(dead.region, listeners, backends);
    wakeLimited(this.shared); // its connections' places are free: workers paused at maxconn take them
    this.log.log('warn', 'worker-restart', { worker: dead.region, exit: code, restarts: this.restarts });
    this.spawn(dead.region).catch((err: Error) => {
      this.log.log('error', 'worker-restart-failed', { worker: dead.region, error: err.message });
    });
  }

  private ask(m: Member, body: Body): Promise<Reply> {
    const seq = ++m.seq;
    return new Promise((resolve) => {
      m.pending.set(seq, resolve);
      m.worker.postMessage({ ...body, seq } as Request);
    });
  }

  private live(): Member[] {
    return this.members.filter((m) => m.ready && !m.retiring);
  }

  /** Asks every live worker; rejects with the first failure. */
  private async all(body: Body): Promise<Reply[]> {
    const replies = await Promise.all(this.live().map((m) => this.ask(m, body)));
    const bad = replies.find((r) => !r.ok);
    if (bad && !bad.ok) throw new LbError(Code.BIND, bad.error, bad.exitCode ?? Exit.UNAVAILABLE);
    return replies;
  }

  /** Phase one of a table change: every worker binds what the new table adds or moves. */
  async stage(table: RoutingTable, slots: SlotMap, ports: Record<string, number>): Promise<void> {
    try {
      await this.all({ t: 'stage', table, slots, ports });
    } catch (err) {
      await this.all({ t: 'abort' }).catch(() => undefined);
      throw err;
    }
  }

  /** Phase two: every worker routes by the staged table. */
  async commit(table: RoutingTable, slots: SlotMap, ports: Record<string, number>): Promise<void> {
    this.current = { table, slots, ports };
    await this.all({ t: 'commit' });
  }

  async stopAccepting(): Promise<number> {
    const replies = await this.all({ t: 'stop-accepting' });
    return replies.reduce((n, r) => n + (r.ok ? (r.connections ?? 0) : 0), 0);
  }

  /**
   * Every worker publishes the bytes of its open connections now, so a snapshot taken next is exact. A
   * worker that does not answer within `ms` (busy, or dying) is not waited for: its figures are at most
   * one publish interval old.
   */
  async publish(ms = 100): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    });
    await Promise.race([Promise.all(this.live().map((m) => this.ask(m, { t: 'publish' }))), late]);
    clearTimeout(timer);
  }

  async idle(): Promise<void> {
    await this.all({ t: 'wait-idle' });
  }

  async closeAll(): Promise<void> {
    await this.all({ t: 'close-all' });
  }

  /** Test builds only: makes one worker throw from its event loop. */
  async crash(region: number): Promise<void> {
    const m = this.members[region];
    if (!m) throw new Error(`no worker ${region}`);
    const r = await this.ask(m, { t: 'crash' });
    if (!r.ok) throw new Error(r.error);
  }

  /** Live worker threads (for `show info` and tests). */
  threadIds(): number[] {
    return this.live().map((m) => m.worker.threadId);
  }

  async terminate(): Promise<void> {
    this.stopped = true;
    const all = this.members.filter(Boolean);
    for (const m of all) m.retiring = true;
    await Promise.all(all.map((m) => m.worker.terminate().catch(() => undefined)));
  }
}
