// Loading a config file off the serving thread, for reloads: a reload can fail, but never take the data
// path or the control port down with it.
//
// The cheap refusals happen here with non-blocking calls (open with O_NONBLOCK and fstat go through the
// libuv thread pool; a FIFO in place of the file is refused, never read). The read, parse, validation,
// compilation and name resolution run in a worker thread (parse-worker.ts) under a memory limit and a
// wall-clock budget: past either, the worker is terminated and the reload fails with LB_CONFIG_BUDGET.
// The table comes back by structured clone, which drops the freeze, so it is frozen again here.

import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { entryUrl } from '../entries.ts';
import { Code, Exit } from '../errors.ts';
import { diagnostic } from './diagnostics.ts';
import { MAX_CONFIG_BYTES } from './limits.ts';
import { notRegularFile } from './load.ts';
import type { ParseJob } from './parse-worker.ts';
import type { PipelineOptions, PipelineResult } from './pipeline.ts';
import { deepFreeze } from './table.ts';

export interface IsolateOptions extends PipelineOptions {
  /**
   * Wall-clock budget for the whole load, in ms (default 10 s: above the 5 s a name lookup may take,
   * and ~100 times what the largest file allowed takes to load).
   */
  timeoutMs?: number;
  /** The worker's V8 heap limit in MiB (default 1024: about twice the ~450 MiB the worst 4 MiB file allowed needs). */
  maxHeapMb?: number;
}

export const DEFAULT_TIMEOUT_MS = 10_000;
export const DEFAULT_MAX_HEAP_MB = 1024;

function failure(code: Parameters<typeof diagnostic>[0], message: string, exitCode: number): PipelineResult {
  return { ok: false, exitCode, diagnostics: [diagnostic(code, [], message)] };
}

/** Same result as loadConfigFile(file, opts), computed in a worker thread within a time and memory budget. */
export async function loadConfigIsolated(file: string, opts: IsolateOptions): Promise<PipelineResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  const overBudget = (): PipelineResult =>
    failure(Code.CONFIG_BUDGET, `loading the config took longer than ${timeoutMs} ms: not loaded`, Exit.CONFIG);

  let handle: FileHandle;
  const opening = open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  const opened = await raceDeadline(opening, deadline);
  if (opened === TIMED_OUT) {
    // A hung file system: the open may still complete; close what it returns, whenever that is.
    opening.then((h) => h.close(), () => undefined).catch(() => undefined);
    return overBudget();
  }
  if (opened instanceof Error) {
    const e = opened as NodeJS.ErrnoException;
    return failure(Code.CONFIG_UNREADABLE, `cannot read config: ${e.code ?? e.message}`, Exit.NOINPUT);
  }
  handle = opened;
  let handedToWorker = false;
  try {
    const st = await raceDeadline(handle.stat(), deadline);
    if (st === TIMED_OUT) return overBudget();
    if (st instanceof Error) {
      const e = st as NodeJS.ErrnoException;
      return failure(Code.CONFIG_UNREADABLE, `cannot read config: ${e.code ?? e.message}`, Exit.NOINPUT);
    }
    const refused = notRegularFile(st);
    if (refused && !refused.ok) return { ok: false, exitCode: Exit.NOINPUT, diagnostics: refused.diagnostics };
    if (st.size > MAX_CONFIG_BYTES) {
      const msg = `config file is ${st.size} bytes, over the limit of ${MAX_CONFIG_BYTES} bytes (4 MiB)`;
      return failure(Code.CONFIG_TOO_LARGE, msg, Exit.CONFIG);
    }
    handedToWorker = true;
    return await inWorker(handle, { fd: handle.fd, opts: { resolve: opts.resolve } }, deadline, timeoutMs, opts.maxHeapMb ?? DEFAULT_MAX_HEAP_MB);
  } finally {
    if (!handedToWorker) await handle.close().catch(() => undefined);
  }
}

const TIMED_OUT = Symbol('timed out');

/** The value of `p` (its rejection as an Error), or TIMED_OUT at the deadline. */
async function raceDeadline<T>(p: Promise<T>, deadline: number): Promise<T | Error | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([p.catch((err: unknown) => (err instanceof Error ? err : new Error(String(err)))), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs the job; the handle is closed once the worker has exited (it reads through its descriptor). */
function inWorker(handle: FileHandle, job: ParseJob, deadline: number, timeoutMs: number, maxHeapMb: number): Promise<PipelineResult> {
  return new Promise<PipelineResult>((resolve) => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const settle = (result: PipelineResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (result.ok) resolve({ ...result, table: deepFreeze(result.table) });
      else resolve(result);
    };
    let worker: Worker;
    try {
      worker = new Worker(entryUrl('config-parse'), {
        workerData: job,
        resourceLimits: { maxOldGenerationSizeMb: maxHeapMb, maxYoungGenerationSizeMb: 32, stackSizeMb: 4 },
      });
    } catch (err) {
      void handle.close().catch(() => undefined);
      settle(failure(Code.CONFIG_WORKER, `cannot start the config worker: ${(err as Error).message}`, Exit.SOFTWARE));
      return;
    }
    timer = setTimeout(() => {
      settle(failure(Code.CONFIG_BUDGET, `loading the config took longer than ${timeoutMs} ms: not loaded`, Exit.CONFIG));
      void worker.terminate();
    }, Math.max(0, deadline - Date.now()));
    worker.once('message', (result: PipelineResult) => {
      settle(result);
      void worker.terminate(); // it is done; do not wait for it to wind down by itself
    });
    worker.once('error', (err: Error & { code?: string }) => {
      if (err.code === 'ERR_WORKER_OUT_OF_MEMORY') {
        settle(failure(Code.CONFIG_BUDGET, `loading the config needed more than ${maxHeapMb} MiB of memory: not loaded`, Exit.CONFIG));
      } else {
        settle(failure(Code.CONFIG_WORKER, `the config worker failed: ${err.message}`, Exit.SOFTWARE));
      }
    });
    worker.once('exit', (code) => {
      void handle.close().catch(() => undefined);
      settle(failure(Code.CONFIG_WORKER, `the config worker exited (code ${code}) without a result`, Exit.SOFTWARE));
    });
  });
}
