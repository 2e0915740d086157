// Backends have names: `{ name = "mail1", host = ..., port = ... }`, "host:port" by default. The name is
// what `show`, `show stat` (svname), MRTG titles and the state file call a backend; the config written back
// (`show config`, `save`, `--print-toml`) keeps it.

import { afterAll, describe, expect, it, vi } from 'vitest';
import { demoConfig } from '../../src/cli/demo.ts';
import { buildTable, loadConfigFile } from '../../src/config/pipeline.ts';
import type { BackendEntry, RoutingTable } from '../../src/config/table.ts';
import { docToToml, tableToDoc } from '../../src/config/to-toml.ts';
import { mrtgBackendTitle, renderShow, renderStatCsv, SHOW_HEADER } from '../../src/stats/render.ts';
import type { Snapshot } from '../../src/stats/snapshot.ts';
import { runLb, scratchDir } from '../helpers/cli.ts';

vi.mock('../../src/runtime.ts', async () => (await import('../helpers/cli.ts')).runtimeThatMustNotStart());

const dir = scratchDir();
afterAll(() => dir.remove());

const web = (backends: unknown[]) => ({ listeners: { web: { listen: '127.0.0.1:18080', groups: [{ backends }] } } });

async function compile(doc: unknown): Promise<RoutingTable> {
  const r = await buildTable(doc, { resolve: 'skip' });
  if (!r.ok) throw new Error(r.diagnostics.map((d) => d.message).join('; '));
  return r.table;
}

const names = (t: RoutingTable): string[] => t.listeners[0]!.groups[0]!.backends.map((b) => b.name);

describe('backend names in the config', () => {
  it('default to host:port, as the host is written (IPv6 in brackets)', async () => {
    const t = await compile(web(['10.0.0.1:143', { host: 'mail2.example', port: 143 }, '[::1]:143', { name: 'backup', host: '10.0.0.9', port: 143 }]));
    expect(names(t)).toEqual(['10.0.0.1:143', 'mail2.example:143', '[::1]:143', 'backup']);
  });

  it('may repeat when unnamed (balance allowed a channel twice)', async () => {
    expect(names(await compile(web(['10.0.0.1:80', '10.0.0.1:80'])))).toEqual(['10.0.0.1:80', '10.0.0.1:80']);
  });

  it.each<[string, unknown[], string, RegExp]>([
    ['two backends with one name', [{ name: 'mail1', host: '10.0.0.1', port: 1 }, { name: 'mail1', host: '10.0.0.2', port: 1 }], 'backends[1].name', /backend name "mail1" is already used by backends\[0\] of this group/],
    ['a name that is another backend\'s address', ['10.0.0.2:1', { name: '10.0.0.2:1', host: '10.0.0.1', port: 1 }], 'backends[1].name', /backend name "10\.0\.0\.2:1" is already used by backends\[0\]/],
    ['the same, the named one first', [{ name: '10.0.0.2:1', host: '10.0.0.1', port: 1 }, '10.0.0.2:1'], 'backends[0].name', /is already used by backends\[1\]/],
    ['a name with a space', [{ name: 'mail 1', host: '10.0.0.1', port: 1 }], 'backends[0].name', /invalid backend name "mail 1": use letters, digits and _ \. : @ - \[ \], at most 64/],
    ['a name with a comma (it would break the CSV)', [{ name: 'a,b', host: '10.0.0.1', port: 1 }], 'backends[0].name', /invalid backend name/],
    ['a name of 65 characters', [{ name: 'x'.repeat(65), host: '10.0.0.1', port: 1 }], 'backends[0].name', /at most 64/],
  ])('rejects %s, pointing at the name', async (_what, backends, path, message) => {
    const r = await buildTable(web(backends), { resolve: 'skip' });
    expect(r.ok).toBe(false);
    const d = !r.ok ? r.diagnostics : [];
    expect(d).toEqual([expect.objectContaining({ severity: 'error', code: 'LB_CONFIG_VALUE', message: expect.stringMatching(message) })]);
    expect(d[0]!.path.join('.')).toBe(`listeners.web.groups.0.${path.replace(/\[(\d+)\]/, '.$1')}`);
  });

  it('lb --check reports a duplicate name at its line', async () => {
    const file = dir.write(
      'dup.toml',
      ['[listeners.imap]', 'listen = 18143', '[[listeners.imap.groups]]', 'backends = [', '  { name = "mail1", host = "10.0.0.1" },', '  { name = "mail1", host = "10.0.0.2" },', ']', ''].join('\n'),
    );
    const { code, stderr } = await runLb(['--check', file]);
    expect(code).toBe(78);
    expect(stderr).toBe(`${file}:6:5: listeners.imap.groups[0].backends[1].name: backend name "mail1" is already used by backends[0] of this group [LB_CONFIG_VALUE]\n`);
  });

  it('lb --check --print shows a configured name beside the address', async () => {
    const file = dir.write(
      'print.toml',
      ['[listeners.imap]', 'listen = 18143', '[[listeners.imap.groups]]', 'backends = [{ name = "mail1", host = "10.0.0.1" }, "10.0.0.2"]', ''].join('\n'),
    );
    const { code, stdout } = await runLb(['--check', '--print', file]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^ {4}0 10\.0\.0\.1:18143 name=mail1 maxc=0/m);
    expect(stdout).toMatch(/^ {4}1 10\.0\.0\.2:18143 maxc=0/m);
  });

  it('are kept by the config written back (show config, save), which reads back to the same table', async () => {
    const t = await compile(web([{ name: 'mail1', host: '10.0.0.1', port: 143 }, '10.0.0.2:143:5', { host: '10.0.0.3', port: 143, weight: 2 }]));
    const toml = docToToml(tableToDoc(t));
    expect(toml).toContain('{ name = "mail1", host = "10.0.0.1", port = 143, maxc = 0, weight = 1, enabled = true }');
    expect(toml).toContain('"10.0.0.2:143:5"'); // unnamed stays in balance's form
    expect(toml).not.toMatch(/name = "10\.0\.0\.3:143"/);
    const file = dir.write('names-roundtrip.toml', toml);
    const again = await loadConfigFile(file, { resolve: 'skip' });
    expect(again.ok && again.table).toEqual(t);
  });
});

describe('backend names in what operators read', () => {
  const entry = (name: string, host: string, port: number): BackendEntry =>
    ({ name, host, port, address: host, maxc: 0, weight: 1, enabled: true, key: `${host}:${port}`, health: null });
  // A snapshot as the stats take it: only the fields the renderers read are filled in.
  const snap = (entries: BackendEntry[]): Snapshot =>
    ({
      version: 'test', pid: 1, now: 0, uptimeSec: 5,
      listeners: [{
        name: 'imap', address: '127.0.0.1:143', cur: 0, max: 0, total: 0, sent: 0, rcvd: 0, noBackend: 0, queue: null,
        groups: [{
          index: 0, policy: 'rr', cur: 0, max: 0, total: 0, sent: 0, rcvd: 0, up: entries.length,
          backends: entries.map((e, index) => ({
            index, entry: e, status: 'ENA', cur: 0, max: 0, total: 0, sent: 0, rcvd: 0, attempts: 0, failures: 0,
            lastChangeSec: 0, downReason: '', check: null,
          })),
        }],
      }],
    }) as unknown as Snapshot;
  const entries = [entry('mail1', '10.0.0.1', 143), entry('10.0.0.2:143', '10.0.0.2', 143)];

  it('show: a name column at the right, after balance\'s columns', () => {
    const lines = renderShow(snap(entries)).split('\n');
    expect(lines[1]).toBe(SHOW_HEADER);
    expect(SHOW_HEADER.endsWith(' check name')).toBe(true);
    expect(lines[2]).toMatch(/^ {2}0 {3}RR {2}0 ENA +10\.0\.0\.1 +143 .* - mail1$/);
    expect(lines[3]).toMatch(/ - 10\.0\.0\.2:143$/);
    // The name starts where the header's does.
    expect(lines[2]!.indexOf('mail1')).toBe(SHOW_HEADER.indexOf('name'));
  });

  it('show stat: svname is the name; addr stays the address', () => {
    const rows = renderStatCsv(snap(entries)).split('\n');
    const header = rows[0]!.slice(2).split(',');
    const col = (row: string, name: string) => row.split(',')[header.indexOf(name)];
    const servers = rows.filter((r) => r.startsWith('imap/0,') && !r.startsWith('imap/0,BACKEND'));
    expect(servers.map((r) => [col(r, 'svname'), col(r, 'addr')])).toEqual([['mail1', '10.0.0.1:143'], ['10.0.0.2:143', '10.0.0.2:143']]);
  });

  it('MRTG: the title names the backend', () => {
    expect(mrtgBackendTitle('imap', 0, 0, entries[0]!)).toBe('lb imap group 0 channel 0 (mail1)');
  });

  it('lb demo names its backends as they greet', async () => {
    const t = await compile(demoConfig(0, 0, [41001, 41002, 41003]));
    expect(t.listeners[0]!.groups.map((g) => g.backends.map((b) => `${b.name}=${b.key}`))).toEqual([
      ['backend-2=127.0.0.1:41002', 'backend-3=127.0.0.1:41003'],
      ['backend-1=127.0.0.1:41001'],
    ]);
  });
});
