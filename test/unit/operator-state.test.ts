// Operator state kept apart from the config: recorded as changes against the config's table, re-applied to
// a fresh compile of the file (reload, restart), written atomically to a state file and read back; and the
// rule for where `save` may write.

import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { addBackend, patchBackend, removeBackend, setPolicy } from '../../src/config/edit.ts';
import {
  applyOperatorState,
  defaultStateFile,
  isEmptyState,
  operatorState,
  parseOperatorState,
  readStateFile,
  saveTargetAllowed,
  writeStateFile,
  type OperatorState,
} from '../../src/config/operator-state.ts';
import { buildTable } from '../../src/config/pipeline.ts';
import type { RoutingTable } from '../../src/config/table.ts';
import { docToToml, tableToDoc } from '../../src/config/to-toml.ts';
import { LbError } from '../../src/errors.ts';
import { scratchDir } from '../helpers/cli.ts';

const dir = scratchDir();
afterAll(() => dir.remove());
afterEach(() => vi.unstubAllEnvs());

async function compile(doc: unknown): Promise<RoutingTable> {
  const r = await buildTable(structuredClone(doc), { resolve: 'skip' });
  if (!r.ok) throw new Error(r.diagnostics.map((d) => d.message).join('; '));
  return r.table;
}

/** A config as its file gives it: two listeners, named and unnamed backends, a duplicate. */
function doc(group0: unknown[] = defaultGroup0(), policy = 'rr'): Record<string, unknown> {
  return {
    listeners: {
      web: {
        listen: '127.0.0.1:0',
        groups: [
          { policy, backends: group0 },
          { backends: ['10.0.1.1:80', '10.0.1.1:80'] }, // balance allowed a channel twice: ordinals tell them apart
        ],
      },
      mail: { listen: '127.0.0.1:0', groups: [{ backends: ['10.0.2.1:143'] }] },
    },
  };
}
function defaultGroup0(): unknown[] {
  return [
    { name: 'web1', host: '10.0.0.1', port: 80, maxc: 10 },
    { name: 'web2', host: '10.0.0.2', port: 80 },
    '10.0.0.3:80',
  ];
}

const backendsOf = (t: RoutingTable, l: string, g: number) => t.listeners.find((x) => x.name === l)!.groups[g]!.backends;
const summary = (t: RoutingTable, l: string, g: number) =>
  backendsOf(t, l, g).map((b) => `${b.name} ${b.key} maxc=${b.maxc} weight=${b.weight}${b.enabled ? '' : ' DIS'}`);
/** The state as it would come back from the file. */
const viaJson = (s: OperatorState): OperatorState => parseOperatorState(JSON.parse(JSON.stringify(s)));

function deeplyFrozen(value: unknown): boolean {
  if (value === null || typeof value !== 'object') return true;
  return Object.isFrozen(value) && Object.values(value).every(deeplyFrozen);
}

describe('operatorState and applyOperatorState', () => {
  it('records nothing when nothing was changed, and re-applying nothing changes nothing', async () => {
    const config = await compile(doc());
    const state = operatorState(config, config, { draining: [] });
    expect(state).toEqual({ version: 1, backends: [], groups: [] });
    expect(isEmptyState(state)).toBe(true);
    const fresh = await compile(doc());
    const r = applyOperatorState(fresh, viaJson(state));
    expect(r).toEqual({ table: fresh, applied: [], skipped: [], draining: [] });
  });

  it('re-applies disable, maxc, weight, policy and drain to a fresh compile of the same file', async () => {
    const config = await compile(doc());
    let running = patchBackend(config, { listener: 'web', group: 0, index: 0 }, { enabled: false });
    running = patchBackend(running, { listener: 'web', group: 0, index: 1 }, { maxc: 7, weight: 3 });
    running = patchBackend(running, { listener: 'web', group: 1, index: 1 }, { enabled: false }); // the second of two
    running = setPolicy(running, 'web', 0, 'leastconn');
    const state = viaJson(operatorState(config, running, { draining: [{ listener: 'mail', group: 0, index: 0 }] }));

    const r = applyOperatorState(await compile(doc()), state);
    expect(r.skipped).toEqual([]);
    expect(r.applied).toEqual([
      'web/0: policy leastconn',
      'web/0/web1: enabled false',
      'web/0/web2: maxc 7',
      'web/0/web2: weight 3',
      'web/1/10.0.1.1:80#1: enabled false',
      'mail/0/10.0.2.1:143: draining',
    ]);
    expect(JSON.parse(JSON.stringify(r.table))).toEqual(JSON.parse(JSON.stringify(running)));
    expect(summary(r.table, 'web', 1)).toEqual(['10.0.1.1:80 10.0.1.1:80 maxc=0 weight=1', '10.0.1.1:80 10.0.1.1:80 maxc=0 weight=1 DIS']);
    expect(r.draining).toEqual([{ listener: 'mail', group: 0, index: 0 }]);
    expect(deeplyFrozen(r.table)).toBe(true);
  });

  it('follows a named backend that the file moved, and skips one the file removed', async () => {
    const config = await compile(doc());
    let running = patchBackend(config, { listener: 'web', group: 0, index: 1 }, { enabled: false }); // web2
    running = patchBackend(running, { listener: 'web', group: 0, index: 2 }, { maxc: 4 }); // 10.0.0.3:80
    const state = viaJson(operatorState(config, running, { draining: [{ listener: 'web', group: 0, index: 0 }] }));

    // The file now lists web2 first, and no longer has 10.0.0.3:80.
    const [web1, web2] = defaultGroup0();
    const r = applyOperatorState(await compile(doc([web2, web1])), state);
    expect(summary(r.table, 'web', 0)).toEqual(['web2 10.0.0.2:80 maxc=0 weight=1 DIS', 'web1 10.0.0.1:80 maxc=10 weight=1']);
    expect(r.draining).toEqual([{ listener: 'web', group: 0, index: 1 }]); // web1, at its new place
    expect(r.skipped).toEqual(['web/0/10.0.0.3:80: no longer in the config']);
  });

  it('lets the file win where it changed the value the operator had changed', async () => {
    const config = await compile(doc());
    let running = patchBackend(config, { listener: 'web', group: 0, index: 0 }, { maxc: 20, enabled: false }); // web1: maxc 10 → 20
    running = setPolicy(running, 'web', 0, 'hash');
    const state = viaJson(operatorState(config, running, { draining: [] }));

    const edited = defaultGroup0();
    (edited[0] as { maxc: number }).maxc = 15; // the file's own new value
    const r = applyOperatorState(await compile(doc(edited, 'weighted')), state);
    expect(summary(r.table, 'web', 0)[0]).toBe('web1 10.0.0.1:80 maxc=15 weight=1 DIS');
    expect(r.table.listeners[0]!.groups[0]!.policy).toBe('weighted');
    expect(r.applied).toEqual(['web/0/web1: enabled false']);
    expect(r.skipped).toEqual([
      'web/0: policy hash: the config changed it from rr to weighted, which stands',
      'web/0/web1: maxc 20: the config changed it from 10 to 15, which stands',
    ]);
  });

  it('re-creates created backends at their place and deletes deleted ones', async () => {
    const config = await compile(doc());
    let running = removeBackend(config, { listener: 'web', group: 0, index: 1 }); // web2
    running = addBackend(running, 'web', 0, { host: '10.0.0.9', port: 8080, address: '10.0.0.9', maxc: 0, weight: 1, enabled: false, health: null });
    running = addBackend(running, 'mail', 0, { host: '10.0.2.2', port: 143, address: '10.0.2.2', maxc: 3, weight: 1, enabled: true, health: null });
    const state = viaJson(operatorState(config, running, { draining: [{ listener: 'web', group: 0, index: 2 }] }));
    expect(state.backends.filter((b) => b.created).map((b) => b.name)).toEqual(['10.0.0.9:8080', '10.0.2.2:143']);
    expect(state.backends.filter((b) => b.deleted).map((b) => b.name)).toEqual(['web2']);

    const r = applyOperatorState(await compile(doc()), state);
    expect(summary(r.table, 'web', 0)).toEqual([
      'web1 10.0.0.1:80 maxc=10 weight=1',
      '10.0.0.3:80 10.0.0.3:80 maxc=0 weight=1',
      '10.0.0.9:8080 10.0.0.9:8080 maxc=0 weight=1 DIS',
    ]);
    expect(summary(r.table, 'mail', 0)).toEqual(['10.0.2.1:143 10.0.2.1:143 maxc=0 weight=1', '10.0.2.2:143 10.0.2.2:143 maxc=3 weight=1']);
    expect(r.draining).toEqual([{ listener: 'web', group: 0, index: 2 }]);
    expect(r.applied).toEqual([
      'web/0/web2: deleted',
      'web/0/10.0.0.9:8080: created 10.0.0.9:8080 (disabled)',
      'web/0/10.0.0.9:8080: draining',
      'mail/0/10.0.2.2:143: created 10.0.2.2:143',
    ]);
    expect(JSON.parse(JSON.stringify(r.table))).toEqual(JSON.parse(JSON.stringify(running)));
  });

  it('does not re-create a backend the file now has, nor delete one the file re-pointed', async () => {
    const config = await compile(doc());
    let running = removeBackend(config, { listener: 'web', group: 0, index: 1 }); // web2 at 10.0.0.2:80
    running = addBackend(running, 'web', 0, { host: '10.0.0.9', port: 80, address: '10.0.0.9', maxc: 0, weight: 1, enabled: false, health: null });
    const state = viaJson(operatorState(config, running, { draining: [] }));

    const edited = defaultGroup0();
    (edited[1] as { host: string }).host = '10.0.0.22'; // web2 re-pointed in the file
    edited.push({ host: '10.0.0.9', port: 80, maxc: 2 }); // and the created one added to the file
    const r = applyOperatorState(await compile(doc(edited)), state);
    expect(summary(r.table, 'web', 0)).toEqual([
      'web1 10.0.0.1:80 maxc=10 weight=1',
      'web2 10.0.0.22:80 maxc=0 weight=1',
      '10.0.0.3:80 10.0.0.3:80 maxc=0 weight=1',
      '10.0.0.9:80 10.0.0.9:80 maxc=2 weight=1',
    ]);
    expect(r.applied).toEqual([]);
    expect(r.skipped).toEqual([
      'web/0/web2: delete: the config now points it at 10.0.0.22:80, which stands',
      'web/0/10.0.0.9:80: create: the config has it now, as configured there',
    ]);
  });

  it('keeps a named backend re-pointed by assign under its name; an unnamed one becomes a new backend', async () => {
    const config = await compile(doc());
    let running = patchBackend(config, { listener: 'web', group: 0, index: 0 }, { host: '10.0.0.11', port: 81, address: '10.0.0.11' });
    running = patchBackend(running, { listener: 'web', group: 0, index: 2 }, { host: '10.0.0.33', port: 80, address: '10.0.0.33' });
    expect(summary(running, 'web', 0)).toEqual([
      'web1 10.0.0.11:81 maxc=10 weight=1',
      'web2 10.0.0.2:80 maxc=0 weight=1',
      '10.0.0.33:80 10.0.0.33:80 maxc=0 weight=1', // called by its address, so its name follows it
    ]);
    const state = viaJson(operatorState(config, running, { draining: [] }));
    const r = applyOperatorState(await compile(doc()), state);
    expect(JSON.parse(JSON.stringify(r.table))).toEqual(JSON.parse(JSON.stringify(running)));
    expect(r.applied).toEqual(['web/0/web1: assigned 10.0.0.11:81', 'web/0/10.0.0.3:80: deleted', 'web/0/10.0.0.33:80: created 10.0.0.33:80']);
  });

  it('skips changes to listeners and groups the file no longer has', async () => {
    const config = await compile(doc());
    let running = patchBackend(config, { listener: 'mail', group: 0, index: 0 }, { enabled: false });
    running = setPolicy(running, 'web', 1, 'hash');
    const state = viaJson(operatorState(config, running, { draining: [] }));
    const fresh = await compile({ listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends: defaultGroup0() }] } } });
    const r = applyOperatorState(fresh, state);
    expect(r.table).toEqual(fresh);
    expect(r.skipped).toEqual(['web/1: policy hash: the group is no longer in the config', 'mail/0/10.0.2.1:143: the group is no longer in the config']);
  });
});

describe('state documents', () => {
  it.each<[string, unknown, RegExp]>([
    ['not an object', [], /must be an object/],
    ['another version', { version: 2, backends: [], groups: [] }, /version 2 is not 1/],
    ['backends missing', { version: 1, groups: [] }, /backends must be an array/],
    ['a backend without a name', { version: 1, backends: [{ listener: 'a', group: 0, ordinal: 0 }], groups: [] }, /backends\[0\]\.name must be a string/],
    ['a maxc change of the wrong type', { version: 1, backends: [{ listener: 'a', group: 0, name: 'x', ordinal: 0, maxc: { config: 1, operator: '2' } }], groups: [] }, /backends\[0\]\.maxc\.operator must be a number/],
    ['an unknown policy', { version: 1, backends: [], groups: [{ listener: 'a', group: 0, policy: { config: 'rr', operator: 'fastest' } }] }, /groups\[0\]\.policy\.operator must be one of/],
  ])('rejects %s with LB_STATE_INVALID', (_what, value, message) => {
    const err = (() => {
      try {
        parseOperatorState(value);
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(LbError);
    expect((err as LbError).code).toBe('LB_STATE_INVALID');
    expect((err as LbError).message).toMatch(message);
  });
});

describe('state files', () => {
  const sample = async (): Promise<OperatorState> => {
    const config = await compile(doc());
    return operatorState(config, patchBackend(config, { listener: 'web', group: 0, index: 0 }, { enabled: false }), { draining: [] });
  };
  const leftovers = (d: string): string[] => readdirSync(d).filter((f) => f.endsWith('.tmp'));

  it('writes JSON that reads back the same, mode 0640, with no temporary file left', async () => {
    const d = join(dir.path, 'write');
    mkdirSync(d);
    const file = join(d, 'state.json');
    const state = await sample();
    writeStateFile(file, state);
    expect(readStateFile(file)).toEqual(state);
    expect(statSync(file).mode & 0o777).toBe(0o640);
    expect(leftovers(d)).toEqual([]);
    // Replacing: the new content, still 0640.
    writeStateFile(file, { version: 1, backends: [], groups: [] });
    expect(readStateFile(file)).toEqual({ version: 1, backends: [], groups: [] });
    expect(statSync(file).mode & 0o777).toBe(0o640);
    expect(leftovers(d)).toEqual([]);
  });

  it('is 0640 even under a umask that would take the read bit of the group', async () => {
    const d = join(dir.path, 'umask');
    mkdirSync(d);
    const old = process.umask(0o077);
    try {
      writeStateFile(join(d, 'state.json'), await sample());
    } finally {
      process.umask(old);
    }
    expect(statSync(join(d, 'state.json')).mode & 0o777).toBe(0o640);
  });

  it('keeps the owner and group of the file it replaces (as root)', async (ctx) => {
    if (process.getuid?.() !== 0) ctx.skip(); // only root can give a file to someone else
    const d = join(dir.path, 'owner');
    mkdirSync(d);
    const file = join(d, 'state.json');
    writeStateFile(file, await sample());
    chownSync(file, 4321, 4322); // as an operator's `chown lb:lb` would have left it
    writeStateFile(file, { version: 1, backends: [], groups: [] });
    const st = statSync(file);
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([4321, 4322, 0o640]);
  });

  it('replaces a symlink at the path instead of writing through it', async () => {
    const d = join(dir.path, 'symlink');
    mkdirSync(d);
    const victim = join(d, 'victim');
    writeFileSync(victim, 'precious\n');
    const file = join(d, 'state.json');
    symlinkSync(victim, file);
    writeStateFile(file, await sample());
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(readStateFile(file)).toEqual(await sample());
  });

  it('reports a write that cannot happen with LB_STATE_WRITE and leaves nothing behind', async () => {
    const missing = join(dir.path, 'no-such-dir', 'state.json');
    expect(() => writeStateFile(missing, { version: 1, backends: [], groups: [] })).toThrow(
      expect.objectContaining({ code: 'LB_STATE_WRITE', message: expect.stringMatching(/cannot write state file .*no-such-dir\/state\.json: ENOENT/) }),
    );
    const d = join(dir.path, 'blocked');
    mkdirSync(join(d, 'state.json'), { recursive: true }); // a directory where the file should go
    writeFileSync(join(d, 'state.json', 'keep'), 'x');
    expect(() => writeStateFile(join(d, 'state.json'), { version: 1, backends: [], groups: [] })).toThrow(
      expect.objectContaining({ code: 'LB_STATE_WRITE' }),
    );
    expect(leftovers(d)).toEqual([]);
  });

  it('reads: null when there is no file yet, clear errors otherwise', () => {
    expect(readStateFile(join(dir.path, 'never-written.json'))).toBeNull();
    const bad = dir.write('bad.json', '{"version": 1, "backends": [');
    expect(() => readStateFile(bad)).toThrow(expect.objectContaining({ code: 'LB_STATE_INVALID', message: expect.stringContaining(`state file ${bad} is not JSON`) }));
    const wrong = dir.write('wrong.json', '{"version": 1, "backends": {}, "groups": []}');
    expect(() => readStateFile(wrong)).toThrow(expect.objectContaining({ code: 'LB_STATE_INVALID', message: `state file ${wrong}: backends must be an array` }));
    expect(() => readStateFile(dir.path)).toThrow(expect.objectContaining({ code: 'LB_STATE_UNREADABLE', message: `cannot read state file ${dir.path}: EISDIR` }));
  });
});

describe('[global] state_file', () => {
  const minimal = (global: Record<string, unknown> = {}) => ({ global, listeners: { a: { listen: 18001, groups: [{ backends: ['127.0.0.1'] }] } } });

  it('defaults to $STATE_DIRECTORY/state.json under systemd, else none', async () => {
    expect(defaultStateFile({})).toBeNull();
    expect(defaultStateFile({ STATE_DIRECTORY: '/var/lib/lb' })).toBe('/var/lib/lb/state.json');
    expect(defaultStateFile({ STATE_DIRECTORY: '/var/lib/lb:/var/lib/other' })).toBe('/var/lib/lb/state.json');
    vi.stubEnv('STATE_DIRECTORY', '');
    expect((await compile(minimal())).global.stateFile).toBeNull();
    vi.stubEnv('STATE_DIRECTORY', '/var/lib/lb');
    expect((await compile(minimal())).global.stateFile).toBe('/var/lib/lb/state.json');
    expect((await compile(minimal({ state_file: '' }))).global.stateFile).toBeNull();
    expect((await compile(minimal({ state_file: '/srv/lb/ops.json' }))).global.stateFile).toBe('/srv/lb/ops.json');
  });

  it('is written back as TOML only where it differs from the default, and reads back the same', async () => {
    vi.stubEnv('STATE_DIRECTORY', '/var/lib/lb');
    for (const global of [{}, { state_file: '' }, { state_file: '/srv/lb/ops.json' }]) {
      const table = await compile(minimal(global));
      const toml = docToToml(tableToDoc(table));
      expect(toml.includes('state_file')).toBe('state_file' in global);
      const file = dir.write('state-file-roundtrip.toml', toml);
      const { loadConfigFile } = await import('../../src/config/pipeline.ts');
      const again = await loadConfigFile(file, { resolve: 'skip' });
      expect(again.ok && again.table.global.stateFile).toBe(table.global.stateFile);
    }
  });
});

describe('saveTargetAllowed', () => {
  const root = join(dir.path, 'save');
  const allowed = join(root, 'allowed');
  const outside = join(root, 'outside');
  mkdirSync(join(allowed, 'sub'), { recursive: true });
  mkdirSync(outside, { recursive: true });
  symlinkSync(outside, join(allowed, 'escape')); // a directory inside that leads outside
  symlinkSync(join(outside, 'x.toml'), join(allowed, 'link.toml')); // a file inside that points outside
  symlinkSync(allowed, join(root, 'alias')); // the allowed directory reached through a symlink

  it.each<[string, string]>([
    ['a file in the directory', join(allowed, 'lb.toml')],
    ['a file in a subdirectory', join(allowed, 'sub', 'lb.toml')],
    ['a path through a symlink to the directory', join(root, 'alias', 'lb.toml')],
  ])('allows %s', (_what, path) => {
    const r = saveTargetAllowed(path, [allowed]);
    expect(r).toEqual({ ok: true, path: expect.stringMatching(/\/allowed\/(sub\/)?lb\.toml$/) });
  });

  it.each<[string, string, RegExp]>([
    ['a relative path', 'lb.toml', /not an absolute path/],
    ['a path with ..', `${allowed}/../outside/x.toml`, /contains "\.\."/],
    ['a path with .. that comes back inside', `${allowed}/../allowed/x.toml`, /contains "\.\."/],
    ['a file outside', join(outside, 'x.toml'), /outside the directories save may write to/],
    ['a directory symlink that leads outside', join(allowed, 'escape', 'x.toml'), /outside the directories/],
    ['a file that is a symlink', join(allowed, 'link.toml'), /is a symbolic link/],
    ['a directory', join(allowed, 'sub'), /not a regular file/],
    ['a missing directory', join(allowed, 'nope', 'x.toml'), /ENOENT/],
    ['/etc/passwd', '/etc/passwd', /outside the directories/],
  ])('refuses %s', (_what, path, reason) => {
    const r = saveTargetAllowed(path, [allowed]);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(reason);
  });

  it('allows nothing when no directory is configured or it does not exist', () => {
    expect(saveTargetAllowed(join(allowed, 'lb.toml'), []).ok).toBe(false);
    expect(saveTargetAllowed(join(allowed, 'lb.toml'), [join(root, 'gone')]).ok).toBe(false);
    expect(existsSync(join(allowed, 'lb.toml'))).toBe(false);
  });
});
