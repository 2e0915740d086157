// The data-plane workers, as the supervisor sees them: started, asked, replaced when they die.
//
// A table change is two-phase across all workers: each binds what the new table adds (stage), and only
// when every one of them succeeded do they all switch (commit); otherwise they all drop what they bound
// (abort), so a failed reload changes nothing anywhere. The pool's table (`current`: what a replacement
// starts with) changes only once every worker confirmed the commit. A worker that dies during the
// commit is replaced by one started on the table being committed (it staged it already, so its ports
// bind); only if that fails does the change roll back, every worker returning to the old table, so a
// change ends with one table everywhere either way.
//
// A worker that dies (an uncaught exception in the data path) is logged with its stack and replaced;
// its slots and queue places are given back and its counts kept (SharedState.workerGone). The main
// thread never serves traffic, so nothing a client does to a worker can take the control port down.

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

/** How many times a worker is moved or restarted to bring it to a table before the change gives up. */
const CONVERGE_ROUNDS = 3;

/** A table as the workers get it. */
export interface TableSet {
  readonly table: RoutingTable;
  readonly slots: SlotMap;
  /** Concrete ports of its listeners (port 0 resolved by the supervisor). */
  readonly ports: Record<string, number>;
}

/** A table with its generation (`show info` Generation): 1 at start, a new number at each commit. */
interface PoolTable extends TableSet {
  readonly generation: number;
}

/** What a commit that succeeded had to do besides switching. */
export interface CommitReport {
  /** Workers that died during it (or could not confirm it), restarted on the new table. */
  readonly restarted: number[];
}

interface Member {
  region: number;
  worker: Worker;
  seq: number;
  pending: Map<number, (r: Reply) => void>;
  ready: boolean;
  /** Its start failed (it was terminated). */
  failed: boolean;
  /** Its thread exited. */
  dead: boolean;
  /** Set when the supervisor ends it on purpose (shutdown): its exit is not a death. */
  retiring: boolean;
  /** The generation of the table it routes by: its first one, then each it confirmed. */
  generation: number;
  /** Settles once it is ready or its start failed. */
  started: Promise<void>;
  /** Settles once its thread has exited (after its replacement, if any, was started). */
  exited: Promise<void>;
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
  /** The table every worker confirmed: what a replacement starts with outside a change. */
  private current: PoolTable | null = null;
  /** The table being committed: what a replacement starts with during the commit. */
  private committing: PoolTable | null = null;
  /**
   * The last generation handed out. A commit rolled back has used its number, which is never reused: a
   * generation names one table, even in a worker that could not be brought back from it.
   */
  private issued = 0;
  /** Test builds only: regions whose next start is made to fail (to test a commit's roll-back). */
  private readonly failStarts = new Set<number>();
  private stopped = false;

  constructor(opts: { size: number; shared: SharedState; log: Logger; events: PoolEvents; testHooks: boolean; reusePort: boolean }) {
    this.size = opts.size;
    this.shared = opts.shared;
    this.log = opts.log;
    this.events = opts.events;
    this.testHooks = opts.testHooks;
    this.reusePort = opts.reusePort;
  }

  /** The generation every worker confirmed. */
  get generation(): number {
    return this.current?.generation ?? 0;
  }

  /** Starts every worker on `first`; rejects (every worker stopped) if any cannot bind. */
  async start(tables: TableSet): Promise<void> {
    const first = { ...tables, generation: ++this.issued };
    this.current = first;
    const started = Array.from({ length: this.size }, (_, region) => this.spawn(region, first).started);
    try {
      await Promise.all(started);
    } catch (err) {
      await this.terminate();
      throw err;
    }
  }

  private spawn(region: number, on: PoolTable): Member {
    const failStart = this.failStarts.delete(region);
    const init: WorkerInit = {
      shared: this.shared.init(),
      region,
      regions: this.shared.regions,
      table: on.table,
      slots: on.slots,
      ports: on.ports,
      reusePort: this.reusePort,
      testHooks: this.testHooks,
      failStart,
    };
    const worker = new Worker(entryUrl('data-plane'), { workerData: init, name: `lb-worker-${region}` });
    let exited!: () => void;
    const m: Member = {
      region,
      worker,
      seq: 0,
      pending: new Map(),
      ready: false,
      failed: false,
      dead: false,
      retiring: false,
      generation: on.generation,
      started: Promise.resolve(),
      exited: new Promise<void>((resolve) => (exited = resolve)),
    };
    this.members[region] = m;
    m.started = new Promise<void>((resolve, reject) => {
      const fail = (err: LbError): void => {
        clearTimeout(timer);
        if (m.ready || m.failed) return;
        // A worker that could not start holds nothing: ended, never replaced (its starter decides).
        m.failed = true;
        m.retiring = true;
        void worker.terminate().catch(() => undefined);
        reject(err);
      };
      const timer = setTimeout(() => fail(new LbError(Code.BIND, `worker ${region} did not start within ${START_MS} ms`, Exit.SOFTWARE)), START_MS);
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
            fail(new LbError(Code.BIND, msg.error, msg.exitCode ?? Exit.UNAVAILABLE));
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
        m.dead = true;
        if (!m.ready) fail(new LbError(Code.BIND, `worker ${region} exited (${code}) while starting`, Exit.SOFTWARE));
        for (const done of m.pending.values()) done({ t: 'reply', seq: -1, ok: false, error: 'worker exited' });
        m.pending.clear();
        if (!m.retiring && !this.stopped && m.ready && this.members[region] === m) this.replace(m, code);
        exited();
      });
    });
    m.started.catch(() => undefined); // whoever started it handles the failure; this is not an unhandled one
    return m;
  }

  /**
   * A worker died: give back what it held (every slot: its connections may hold those of earlier tables
   * too), keep its counts, start another in its place on the table in force, or the one being committed.
   */
  private replace(dead: Member, code: number): void {
    this.restarts++;
    const cap = this.shared.capacity;
    this.shared.workerGone(dead.region, range(cap.listeners), range(cap.backends));
    wakeLimited(this.shared); // its connections' places are free: workers paused at maxconn take them
    const on = this.committing ?? this.current!;
    this.log.log('warn', 'worker-restart', { worker: dead.region, exit: code, restarts: this.restarts, generation: on.generation });
    this.spawn(dead.region, on).started.catch((err: Error) => {
      this.log.log('error', 'worker-restart-failed', { worker: dead.region, error: err.message });
    });
  }

  private ask(m: Member, body: Body): Promise<Reply> {
    if (m.dead) return Promise.resolve({ t: 'reply', seq: -1, ok: false, error: 'worker exited' });
    const seq = ++m.seq;
    return new Promise((resolve) => {
      m.pending.set(seq, resolve);
      m.worker.postMessage({ ...body, seq } as Request);
    });
  }

  private live(): Member[] {
    return this.members.filter((m) => m.ready && !m.retiring && !m.dead);
  }

  /** Asks every live worker; rejects with the first failure. */
  private async all(body: Body): Promise<Reply[]> {
    const replies = await Promise.all(this.live().map((m) => this.ask(m, body)));
    const bad = replies.find((r) => !r.ok);
    if (bad && !bad.ok) throw new LbError(Code.BIND, bad.error, bad.exitCode ?? Exit.UNAVAILABLE);
    return replies;
  }

  /** Phase one of a table change: every worker binds what the new table adds or moves. */
  async stage(next: TableSet): Promise<void> {
    try {
      await this.all({ t: 'stage', table: next.table, slots: next.slots, ports: next.ports });
    } catch (err) {
      await this.all({ t: 'abort' }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Phase two: every worker routes by the staged table. Resolves once every worker is on it (those that
   * died meanwhile replaced by workers started on it); rejects once every worker is back on the old
   * table, if one could not get there.
   */
  async commit(tables: TableSet): Promise<CommitReport> {
    const prev = this.current!;
    const next = { ...tables, generation: ++this.issued };
    const restarted = new Set<number>();
    this.committing = next;
    try {
      const members = this.live();
      const replies = await Promise.all(members.map((m) => this.ask(m, { t: 'commit' })));
      members.forEach((m, i) => {
        const r = replies[i]!;
        if (r.ok) {
          m.generation = next.generation;
          return;
        }
        restarted.add(m.region);
        if (!m.dead) {
          // Alive but unsure of its state after a failed switch: it is started afresh on the new table.
          this.log.log('error', 'worker-commit-failed', { worker: m.region, error: r.error, detail: 'restarting it on the new table' });
          void m.worker.terminate();
        }
      });
      await this.converge(next, restarted, false);
      this.current = next;
      return { restarted: [...restarted].sort((a, b) => a - b) };
    } catch (err) {
      this.committing = null;
      this.log.log('error', 'commit-rolled-back', { generation: prev.generation, error: (err as Error).message, detail: 'every worker returns to the old table' });
      await this.converge(prev, restarted, true).catch((e: Error) =>
        this.log.log('error', 'rollback-failed', { error: e.message, detail: 'a worker could not return to the old table; lb runs with fewer workers' }),
      );
      throw err;
    } finally {
      this.committing = null;
    }
  }

  /**
   * Brings every region's worker to `target`: waits for one starting, moves one live on another table
   * (a replacement that started while the change ran, or a roll-back), waits out one dying (its
   * replacement starts on the pool's table). A failed start fails the commit; in a roll-back
   * (`respawn`) the region is started again on `target`.
   */
  private async converge(target: PoolTable, restarted: Set<number>, respawn: boolean): Promise<void> {
    for (let region = 0; region < this.size; region++) {
      for (let round = 0; ; round++) {
        const m = this.members[region]!;
        await m.started.catch(() => undefined);
        if (m.ready && !m.dead && m.generation === target.generation) break;
        if (this.stopped) throw new LbError(Code.BIND, 'lb is stopping', Exit.SOFTWARE);
        if (round >= CONVERGE_ROUNDS) throw new LbError(Code.BIND, `worker ${region} could not take table generation ${target.generation}`, Exit.SOFTWARE);
        if (m.failed) {
          if (!respawn) throw new LbError(Code.BIND, `worker ${region} could not start on the new table`, Exit.SOFTWARE);
          this.spawn(region, target);
          restarted.add(region);
          continue;
        }
        if (m.ready && !m.dead && (await this.move(m, target))) continue;
        if (!m.dead) void m.worker.terminate();
        await m.exited; // its replacement is started on the pool's table (target)
        restarted.add(region);
      }
    }
  }

  /** One worker alone onto `target` (stage, then commit); false if it could not. */
  private async move(m: Member, target: PoolTable): Promise<boolean> {
    const staged = await this.ask(m, { t: 'stage', table: target.table, slots: target.slots, ports: target.ports });
    if (!staged.ok) {
      await this.ask(m, { t: 'abort' });
      return false;
    }
    const committed = await this.ask(m, { t: 'commit' });
    if (committed.ok) m.generation = target.generation;
    return committed.ok;
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

  /**
   * Test builds only: makes one worker throw from its event loop, now or when it is next told to commit
   * (before it confirms); `restartFails`: the start of its replacement fails too.
   */
  async crash(region: number, at: 'now' | 'commit' = 'now', restartFails = false): Promise<void> {
    const m = this.members[region];
    if (!m) throw new Error(`no worker ${region}`);
    if (restartFails) this.failStarts.add(region);
    const r = await this.ask(m, { t: 'crash', at });
    if (!r.ok) throw new Error(r.error);
  }

  /** Live worker threads (for `show info` and tests). */
  threadIds(): number[] {
    return this.live().map((m) => m.worker.threadId);
  }

  /** The table generation each live worker routes by (`show info` WorkerGenerations). */
  generations(): number[] {
    return this.live().map((m) => m.generation);
  }

  async terminate(): Promise<void> {
    this.stopped = true;
    const all = this.members.filter(Boolean);
    for (const m of all) m.retiring = true;
    await Promise.all(all.map((m) => m.worker.terminate().catch(() => undefined)));
  }
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
