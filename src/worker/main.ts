// A data-plane worker thread: started by the supervisor (src/supervisor/workers.ts) with its share of
// the work in `workerData`, it serves traffic and answers the supervisor's requests. Its log lines go
// to the supervisor in batches, which writes them: whole lines, never interleaved.

import { parentPort, workerData } from 'node:worker_threads';
import { BatchedWriter, createLogger } from '../log.ts';
import { SharedState } from '../shared/state.ts';
import { DataPlane } from './data-plane.ts';
import { nativeAcceptAvailable, nativeConnectAvailable, spliceAvailable } from '../proxy/splice.ts';
import type { Event, Reply, Request, WorkerInit } from './protocol.ts';

const init = workerData as WorkerInit;
const port = parentPort!;
const post = (m: Event | Reply): void => port.postMessage(m);

const lines = new BatchedWriter((text) => post({ t: 'log', text }));
const log = createLogger(init.table.global.logFormat, (line) => lines.line(line), init.table.global.logLevel);
// Events (connect failures, health changes) are few and an operator wants them now: they go at once,
// after whatever access lines wait before them. Only access lines are batched.
const logEvent = log.log.bind(log);
log.log = (level, event, fields) => {
  logEvent(level, event, fields);
  lines.flush();
};
const shared = new SharedState(init.shared);
const plane = new DataPlane({
  shared,
  region: init.region,
  regions: init.regions,
  reusePort: init.reusePort,
  log,
  table: init.table,
  hooks: {
    failure: (slot, reason) => post({ t: 'failure', slot, reason }),
    healthChanged: () => post({ t: 'health' }),
  },
});

/** Drain timeouts are the supervisor's; this bounds only sockets that never report their close. */
const CLOSE_GRACE_MS = 1000;

/** Test builds only: the next commit switches, then the worker dies without confirming it. */
let crashAtCommit = false;

function crash(): void {
  setImmediate(() => {
    throw new Error('worker crashed on purpose (test hook)');
  });
}

async function handle(req: Request): Promise<Reply> {
  switch (req.t) {
    case 'stage':
      await plane.stage(req.table, req.slots, req.ports);
      return { t: 'reply', seq: req.seq, ok: true };
    case 'commit':
      await plane.commit();
      if (crashAtCommit) {
        crash();
        return new Promise<Reply>(() => undefined); // never confirmed
      }
      return { t: 'reply', seq: req.seq, ok: true };
    case 'abort':
      await plane.abort();
      return { t: 'reply', seq: req.seq, ok: true };
    case 'stop-accepting':
      await plane.stopAccepting();
      return { t: 'reply', seq: req.seq, ok: true, connections: plane.connections };
    case 'wait-idle':
      await plane.idle();
      return { t: 'reply', seq: req.seq, ok: true };
    case 'close-all':
      await plane.closeAll(CLOSE_GRACE_MS);
      await plane.dispose();
      lines.flush();
      return { t: 'reply', seq: req.seq, ok: true };
    case 'publish':
      plane.publish();
      return { t: 'reply', seq: req.seq, ok: true };
    case 'log-format':
      log.format = req.format;
      return { t: 'reply', seq: req.seq, ok: true };
    case 'crash':
      if (!init.testHooks) return { t: 'reply', seq: req.seq, ok: false, error: 'test hooks are off' };
      if (req.at === 'commit') crashAtCommit = true;
      else crash();
      return { t: 'reply', seq: req.seq, ok: true };
  }
}

port.on('message', (req: Request) => {
  handle(req).then(
    (reply) => {
      lines.flush();
      post(reply);
    },
    (err: Error & { exitCode?: number }) => {
      lines.flush();
      post({ t: 'reply', seq: req.seq, ok: false, error: err.message, exitCode: err.exitCode });
    },
  );
});

// The first table: bind it like a reload would, then say so.
Promise.resolve()
  .then(() => {
    if (init.testHooks && init.failStart) throw new Error('worker start failed on purpose (test hook)');
  })
  .then(() => plane.stage(init.table, init.slots, init.ports))
  .then(() => plane.commit())
  .then(
    () => {
      lines.flush();
      post({ t: 'ready', splice: spliceAvailable(), nativeConnect: nativeConnectAvailable(), nativeAccept: nativeAcceptAvailable() });
    },
    (err: Error & { exitCode?: number }) => {
      lines.flush();
      post({ t: 'reply', seq: 0, ok: false, error: err.message, exitCode: err.exitCode });
    },
  );
