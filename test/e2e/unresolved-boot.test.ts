// A backend name that does not resolve at boot, without [global.dns] (issue 39, item 1): lb starts with
// that backend down (no traffic, shown as such), serves through the others, and takes the backend into
// service once the name resolves (looked up again with back-off); the address the state file kept for a
// name is used when the name does not resolve at start (HAProxy's init-addr last,libc,none). Names end
// in .invalid, which never resolves (RFC 2606); where a test needs the name to resolve later, the
// in-process lb is given a lookup the test controls.

import { readFileSync, writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { renderStatCsv } from '../../src/stats/render.ts';
import { ask, until, within } from '../helpers/backends.ts';
import { ctl, startCliLb, useControlScope } from '../helpers/control.ts';
import { closeHealthServers, namedEcho, parseStatCsv } from '../helpers/health.ts';
import { at, cleanup, startLb, webDoc, type InProcessLb } from '../helpers/lb.ts';

const scope = useControlScope();
afterEach(async () => {
  await cleanup();
  await closeHealthServers();
});

const NOWHERE = 'nowhere.invalid';

function row(lb: InProcessLb, svname: string): Record<string, string> {
  const r = parseStatCsv(renderStatCsv(lb.rt.snapshot())).find((x) => x.svname === svname);
  if (!r) throw new Error(`no row ${svname}`);
  return r;
}

const notFound = (): Error => Object.assign(new Error(`getaddrinfo ENOTFOUND ${NOWHERE}`), { code: 'ENOTFOUND' });

describe('a backend name that does not resolve at boot', () => {
  it('lb starts with it down, serves through the others, and uses it once the name resolves', async () => {
    const a = await namedEcho('a');
    const b = await namedEcho('b');
    let answer: string | Error = notFound();
    let lookups = 0;
    const lookup = async (name: string): Promise<string | Error> => {
      expect(name).toBe(NOWHERE);
      lookups++;
      return answer;
    };
    const lb = await startLb(webDoc([{ backends: [at(a.port), { host: NOWHERE, port: b.port }] }]), { resolve: 'error', lookup });
    const snap = lb.rt.snapshot().listeners[0]!.groups[0]!.backends[1]!;
    expect(snap.status).toBe('dis');
    expect(snap.downReason).toBe(`cannot resolve ${NOWHERE}: ENOTFOUND (retrying)`);
    expect(row(lb, `${NOWHERE}:${b.port}`).status).toMatch(/^DOWN/);
    for (let i = 0; i < 4; i++) expect(await ask(lb.port(), `x${i}`)).toBe(`[a] x${i}`);
    // Retried (1 s, then 2 s later); the same failure as at start is not logged again.
    await until(() => lookups >= 1, 3000, 'the first retry');
    expect(lb.logs.all({ event: 'resolve-failed' })).toHaveLength(0);
    answer = '127.0.0.1';
    await lb.logs.waitFor({ event: 'resolved', name: NOWHERE, address: '127.0.0.1' }, { ms: 5000 });
    expect(lb.rt.snapshot().listeners[0]!.groups[0]!.backends[1]!.status).toBe('ENA');
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add((await ask(lb.port(), `y${i}`)).slice(0, 3));
    expect([...seen].sort()).toEqual(['[a]', '[b]']);
    const line = await lb.logs.waitFor({ event: 'conn', backend: `${NOWHERE}:${b.port}` });
    expect(line.fields['backend_addr']).toBe(`127.0.0.1:${b.port}`);
  });

  it('lb run starts (no exit 78): a warning with file, line and key path; show lists the backend down; a reload keeps it so', async () => {
    const a = await namedEcho('a');
    const file = scope.scratch().write(
      'lb.toml',
      ['[control]', 'listen = "127.0.0.1:0"', '', '[listeners.web]', 'listen = "127.0.0.1:0"', '[[listeners.web.groups]]',
        `backends = ["127.0.0.1:${a.port}", "${NOWHERE}:9"]`, ''].join('\n'),
    );
    const lbp = await startCliLb([file]);
    expect(lbp.stderr()).toMatch(new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:7:.*listeners\\.web\\.groups\\[0\\]\\.backends\\[1\\]: warning: cannot resolve host "${NOWHERE}": ENOTFOUND; lb starts with this backend down and retries resolving it`));
    expect(await ask(lbp.ports['web']!, 'served')).toBe('[a] served');
    const show = await ctl(lbp.controlPort, 'show stat');
    expect(show).toMatch(new RegExp(`^web/0,${NOWHERE.replace('.', '\\.')}:9,(?:[^,]*,){15}DOWN,`, 'm'));
    lbp.proc.kill('SIGHUP');
    await lbp.waitOutput((t) => /\breloaded\b/.test(t), 10_000, 'the reload', 'stderr');
    expect(lbp.stderr()).not.toMatch(/reload-failed/);
    expect(await ask(lbp.ports['web']!, 'again')).toBe('[a] again');
  });

  it("balance's command line: a warning naming the operand, and the other backend serves", async () => {
    const a = await namedEcho('a');
    const lbp = await startCliLb(['0', `${NOWHERE}:9`, `127.0.0.1:${a.port}`]);
    expect(lbp.stderr()).toMatch(`lb: warning: "${NOWHERE}:9": cannot resolve host "${NOWHERE}": ENOTFOUND; lb starts with this backend down and retries resolving it [LB_CONFIG_RESOLVE]`);
    const port = Object.values(lbp.ports)[0]!;
    for (let i = 0; i < 3; i++) expect(await ask(port, `b${i}`)).toBe(`[a] b${i}`);
  });

  it("starts on the address the state file kept for the name, and keeps a resolved name's address there", async () => {
    const a = await namedEcho('a');
    const b = await namedEcho('b');
    const state = scope.scratch().write('state.json', JSON.stringify({ version: 1, backends: [], groups: [], addresses: { [NOWHERE]: '127.0.0.1' } }));
    const lb = await startLb(
      webDoc([{ backends: [at(a.port), { host: NOWHERE, port: b.port }, { host: 'localhost', port: a.port }] }], {}, { state_file: state }),
      { resolve: 'error', lookup: async () => notFound() },
    );
    const warned = await lb.logs.waitFor({ event: 'resolve-last', name: NOWHERE });
    expect(warned.fields['address']).toBe('127.0.0.1');
    expect(lb.rt.snapshot().listeners[0]!.groups[0]!.backends[1]!.status).toBe('ENA');
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add((await ask(lb.port(), `z${i}`)).slice(0, 3));
    expect(seen.has('[b]')).toBe(true);
    // The file now has every name's address: the kept one and localhost's, resolved at this start.
    const saved = JSON.parse(readFileSync(state, 'utf8')) as { addresses: Record<string, string> };
    expect(saved.addresses[NOWHERE]).toBe('127.0.0.1');
    expect(saved.addresses['localhost']).toMatch(/^(127\.0\.0\.1|::1)$/);
    writeFileSync(state, '{}'); // nothing else reads it
    await within(lb.stop(), 5000, 'the stop');
  });
});
