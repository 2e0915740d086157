// The access-log line (text): the backend by its name, the address lb connected to as its own field
// (`backend=www1 backend_addr=127.0.0.1:PORT`), in a fixed order people parse; `-` for both when no
// backend was reached. The JSON form is test/e2e/json-logs.test.ts.

import { afterEach, describe, expect, it } from 'vitest';
import { ask, connectClient, refusedPort, within } from '../helpers/backends.ts';
import { closeHealthServers, namedEcho } from '../helpers/health.ts';
import { at, cleanup, startLb, webDoc } from '../helpers/lb.ts';

afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

describe('the access log', () => {
  it('names the backend by its name and gives the address it connected to as backend_addr', async () => {
    const a = await namedEcho('a');
    const b = await namedEcho('b');
    const lb = await startLb(webDoc([{ backends: [{ name: 'www1', host: '127.0.0.1', port: a.port }, at(b.port)] }]));
    await ask(lb.port(), 'one');
    await ask(lb.port(), 'two');
    const named = await lb.logs.waitFor({ event: 'conn', backend: 'www1' });
    expect(named.fields['backend_addr']).toBe(`127.0.0.1:${a.port}`);
    // Without a name the backend is called as configured, the same text show stat uses.
    const unnamed = await lb.logs.waitFor({ event: 'conn', backend: at(b.port) });
    expect(unnamed.fields['backend_addr']).toBe(`127.0.0.1:${b.port}`);
    expect(lb.logs.text()).toMatch(
      new RegExp(`info conn id=\\d+ listener=web client=127\\.0\\.0\\.1:\\d+ backend=www1 backend_addr=127\\.0\\.0\\.1:${a.port} group=0 sent=3 rcvd=\\d+ ms=\\d+ end=\\S+`),
    );
  });

  it('a client no backend took: backend=- backend_addr=-', async () => {
    const lb = await startLb(webDoc([{ backends: [at(await refusedPort())] }]));
    const c = await connectClient(lb.port());
    await within(Promise.race([c.ended, c.closed]), 3000, 'the refused client to be closed');
    const line = await lb.logs.waitFor({ event: 'conn' });
    expect(line.fields).toMatchObject({ backend: '-', backend_addr: '-' });
  });
});
