// The thread a reload reads, parses, validates, compiles and resolves the config file in (isolate.ts).
//
// It gets a descriptor the main thread opened with O_NONBLOCK and found to be a regular file of
// acceptable size, runs the same pipeline as `lb --check`, and posts the result back once. Whatever
// happens here (a parser bug, a runaway allocation, a hang) costs this thread, never the serving one.

import { parentPort, workerData } from 'node:worker_threads';
import { Exit } from '../errors.ts';
import { readConfigFd } from './load.ts';
import { loadConfigSource, type PipelineOptions, type PipelineResult } from './pipeline.ts';

export interface ParseJob {
  /** Open descriptor of the config file (the main thread closes it). */
  readonly fd: number;
  readonly opts: PipelineOptions;
}

async function run(job: ParseJob): Promise<PipelineResult> {
  const read = readConfigFd(job.fd);
  if (!read.ok) return { ok: false, exitCode: read.unreadable ? Exit.NOINPUT : Exit.CONFIG, diagnostics: read.diagnostics };
  return loadConfigSource(read.source, job.opts);
}

if (parentPort) {
  const port = parentPort;
  // An exception here reaches the main thread as the worker's 'error' event, with its message.
  port.postMessage(await run(workerData as ParseJob));
}
