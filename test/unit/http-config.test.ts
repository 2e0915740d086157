// `[control] http` and `http_level`: compiled, checked, and written back by `show config` / `save`.

import { describe, expect, it } from 'vitest';
import { buildTable } from '../../src/config/pipeline.ts';
import { docToToml, tableToDoc } from '../../src/config/to-toml.ts';
import { httpConfigOf } from '../../src/http/server.ts';

const listeners = { web: { listen: '127.0.0.1:8080', groups: [{ backends: ['127.0.0.1:9000'] }] } };

async function build(control: Record<string, unknown>) {
  return buildTable({ control, listeners }, { resolve: 'skip' });
}

describe('control.http', () => {
  it('is off unless set; a bare port listens on loopback; the level defaults to read', async () => {
    const off = await build({ listen: '127.0.0.1:8023' });
    expect(off.ok && off.table.control).toMatchObject({ http: null, httpLevel: 'read' });
    expect(httpConfigOf(off.ok ? off.table.control : null)).toBeNull();
    for (const http of [8024, ':8024', '8024']) {
      const r = await build({ http });
      expect(r.ok && r.table.control?.http).toEqual({ host: '127.0.0.1', port: 8024 });
    }
    const all = await build({ http: '0.0.0.0:8024', http_level: 'admin', allow: ['10.0.0.0/8'] });
    expect(httpConfigOf(all.ok ? all.table.control : null)).toEqual({
      listen: { host: '0.0.0.0', port: 8024 }, level: 'admin', allow: ['10.0.0.0/8'], tokenFile: null,
    });
  });

  it('warns when buttons need no token, refuses an unknown level and an address a listener has', async () => {
    const open = await build({ http: 8024, http_level: 'operator' });
    if (!open.ok) throw new Error('rejected');
    expect(open.warnings.map((d) => d.path.join('.'))).toContain('control.http_level');
    expect((await build({ http: 8024, http_level: 'root' })).ok).toBe(false);
    const clash = await build({ http: '127.0.0.1:8080' });
    if (clash.ok) throw new Error('accepted');
    expect(clash.diagnostics.map((d) => `${d.path.join('.')}: ${d.message}`)).toContain(
      'listeners.web.listen: address 127.0.0.1:8080 is already used by control',
    );
    expect((await build({ http: '127.0.0.1:99999' })).ok).toBe(false);
  });

  it('survives show config and save (the TOML written back compiles to the same face)', async () => {
    const r = await build({ http: 8024, http_level: 'operator' });
    if (!r.ok) throw new Error('rejected');
    const toml = docToToml(tableToDoc(r.table));
    expect(toml).toMatch(/^http = "127\.0\.0\.1:8024"$/m);
    expect(toml).toMatch(/^http_level = "operator"$/m);
    const again = await buildTable(tableToDoc(r.table), { resolve: 'skip' });
    expect(again.ok && again.table.control).toMatchObject({ http: { host: '127.0.0.1', port: 8024 }, httpLevel: 'operator' });
  });
});
