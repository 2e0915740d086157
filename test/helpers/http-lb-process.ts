// A child process running lb with its HTTP face, for measurements that need lb alone on its event loop
// (clients in the test's process must not compete with it). Argument: the config document as JSON.
// Prints "READY <listener port> <http port>" once both are bound; exits on SIGTERM or when stdin closes.

import { buildTable } from '../../src/config/pipeline.ts';
import { createLogger } from '../../src/log.ts';
import { httpConfigOf, HttpServer } from '../../src/http/server.ts';
import { httpTargetOf } from '../../src/http/target.ts';
import { Runtime } from '../../src/runtime.ts';

const built = await buildTable(JSON.parse(process.argv[2]!), { resolve: 'skip' });
if (!built.ok) throw new Error(`config rejected: ${JSON.stringify(built.diagnostics)}`);
const rt = new Runtime(built.table, { log: createLogger(built.table.global.logFormat, () => undefined) });
await rt.start();
const http = new HttpServer(httpConfigOf(rt.table.control)!, httpTargetOf(rt, () => false), rt.log);
await http.start();
process.stdout.write(`READY ${rt.port('web')} ${http.address()!.port}\n`);
const stop = async (): Promise<void> => {
  await http.close();
  // Open relays are the test's to close; a stop that waits on one must not keep this process alive.
  await Promise.race([rt.shutdown(0), new Promise((r) => setTimeout(r, 2000))]);
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.resume();
