// The messages between the supervisor (main thread) and a data-plane worker. Requests carry a sequence
// number and get exactly one reply with the same number.

import type { LogFormat, RoutingTable } from '../config/table.ts';
import type { SlotMap } from '../shared/slots.ts';
import type { SharedInit } from '../shared/state.ts';

/** What a worker is started with (`workerData`). */
export interface WorkerInit {
  readonly shared: SharedInit;
  /** This worker's counter region, and how many there are (connection ids interleave by it). */
  readonly region: number;
  readonly regions: number;
  readonly table: RoutingTable;
  readonly slots: SlotMap;
  /** Concrete ports for the table's listeners (port 0 resolved by the supervisor). */
  readonly ports: Readonly<Record<string, number>>;
  readonly reusePort: boolean;
  /** Test builds only: accept the `crash` request. */
  readonly testHooks: boolean;
  /** Test builds only: fail the start (as a bind failure would), to test a commit's roll-back. */
  readonly failStart?: boolean;
}

export type Request =
  | { t: 'stage'; seq: number; table: RoutingTable; slots: SlotMap; ports: Record<string, number> }
  | { t: 'commit'; seq: number }
  | { t: 'abort'; seq: number }
  | { t: 'stop-accepting'; seq: number }
  | { t: 'wait-idle'; seq: number }
  | { t: 'close-all'; seq: number }
  /** Test builds only: throw from the event loop now, or at the next commit before confirming it. */
  | { t: 'crash'; seq: number; at: 'now' | 'commit' }
  | { t: 'publish'; seq: number }
  | { t: 'log-format'; seq: number; format: LogFormat };

export type Reply =
  | { t: 'reply'; seq: number; ok: true; connections?: number }
  | { t: 'reply'; seq: number; ok: false; error: string; exitCode?: number };

/** Unsolicited messages from a worker. */
export type Event =
  | { t: 'ready'; splice: { ok: true } | { ok: false; reason: string }; nativeConnect: { ok: true } | { ok: false; reason: string }; nativeAccept: { ok: true } | { ok: false; reason: string } }
  | { t: 'log'; text: string }
  /** Why a backend was last marked bad (the numbers are shared; the text is not). */
  | { t: 'failure'; slot: number; reason: string }
  /** A health transition caused by traffic: the supervisor wakes queued clients everywhere. */
  | { t: 'health' };
