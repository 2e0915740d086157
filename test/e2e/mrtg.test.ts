// The real MRTG (Debian's `mrtg`) polling a live lb through `lb ctl ... mrtg-bytes`: run twice with
// traffic in between (MRTG needs two readings for a rate), and its log file must hold the byte counts lb
// reported. examples/mrtg.cfg is run the same way, so its stanzas are known to work.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { connectClient, sinkServer, within } from '../helpers/backends.ts';
import { CLI, useControlScope, ctl, needTool, runToEnd, startControlLb } from '../helpers/control.ts';
import { at, ROOT, type InProcessLb } from '../helpers/lb.ts';

const scope = useControlScope();

/** `lb ctl` as MRTG runs it: absolute paths, no reliance on $PATH or the working directory. */
const LB_CTL = `${process.execPath} ${CLI} ctl`;

/** One MRTG run over `cfg` (LANG=C: Debian's mrtg refuses UTF-8 locales). Async: lb serves meanwhile. */
async function mrtg(dir: string, cfg: string): Promise<void> {
  const env = { ...process.env, LANG: 'C', LC_ALL: 'C' };
  const r = await runToEnd('mrtg', ['--lock-file', path.join(dir, 'mrtg.lock'), '--logging', path.join(dir, 'mrtg.out'), cfg], {
    env,
    cwd: dir,
    ms: 20_000,
  });
  const log = (): string => {
    try {
      return readFileSync(path.join(dir, 'mrtg.out'), 'utf8');
    } catch {
      return '';
    }
  };
  expect(r.code, `mrtg failed:\n${r.stdout}\n${r.stderr}\n${log()}`).toBe(0);
}

/** The first line of an MRTG log: `TIME IN OUT`, the last counter values it read. */
function lastReading(dir: string, target: string): { time: number; in: number; out: number } {
  const [time, inn, out] = readFileSync(path.join(dir, `${target}.log`), 'utf8').split('\n')[0]!.split(' ').map(Number);
  return { time: time!, in: inn!, out: out! };
}

/** MRTG needs two readings in different seconds to compute a rate: wait for the clock to pass `after`. */
async function nextSecond(after: number): Promise<void> {
  const ms = (after + 1) * 1000 - Date.now();
  if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms + 5));
}

/** `n` clients each send `up` bytes and read what the sink backend sends; returns when lb has logged them. */
async function traffic(lb: InProcessLb, n: number, up: number, already: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const c = await connectClient(lb.port());
    c.socket.end(Buffer.alloc(up, 0x61));
    await within(c.ended, 3000, 'the backend\'s data and FIN');
    await c.close();
  }
  await lb.logs.waitFor('conn', { count: already + n });
}

describe('MRTG against a live lb', () => {
  it('two mrtg runs with traffic between them: the log holds the byte counts lb reported', async (ctx) => {
    needTool(ctx, 'mrtg');
    const s1 = await sinkServer('s1', { send: Buffer.alloc(1500, 1) });
    const { lb, port } = await startControlLb({
      global: { access_log: true },
      control: { listen: '127.0.0.1:0' }, // read-only is enough for MRTG
      listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends: [at(s1.port)] }] } },
    });
    const scratch = scope.scratch();
    const dir = scratch.path;
    const cfg = scratch.write(
      'mrtg.cfg',
      [
        `WorkDir: ${dir}`,
        `Target[lb_web]: \`${LB_CTL} --control 127.0.0.1:${port} mrtg-bytes web 0 0\``,
        'MaxBytes[lb_web]: 125000000',
        'Options[lb_web]: growright',
        'Title[lb_web]: lb web group 0 channel 0', // mrtg refuses a target without a Title
        '',
      ].join('\n'),
    );

    await traffic(lb, 2, 200, 0);
    await mrtg(dir, cfg);
    const first = lastReading(dir, 'lb_web');
    expect(first).toMatchObject({ in: 3000, out: 400 });

    await traffic(lb, 3, 300, 2);
    const reported = (await ctl(port, 'mrtg-bytes web 0 0')).split('\n').slice(0, 2).map(Number);
    expect(reported).toEqual([3000 + 4500, 400 + 900]);
    await nextSecond(first.time);
    await mrtg(dir, cfg);
    const second = lastReading(dir, 'lb_web');
    expect(second).toMatchObject({ in: reported[0], out: reported[1] });
    expect(second.time).toBeGreaterThan(first.time);
    // The second line is MRTG's rate for the interval: what changed, divided by the seconds between.
    const rate = readFileSync(path.join(dir, 'lb_web.log'), 'utf8').split('\n')[1]!.split(' ').map(Number);
    expect(rate[0]).toBe(second.time);
    expect(rate[1]).toBeGreaterThan(0);
    expect(rate[2]).toBeGreaterThan(0);
    expect(readFileSync(path.join(dir, 'lb_web.html'), 'utf8')).toContain('lb_web');
  });

  it('examples/mrtg.cfg works as written: listener bytes, backend bytes, connection counters, open-connections gauge', async (ctx) => {
    needTool(ctx, 'mrtg');
    const a = await sinkServer('a', { send: Buffer.alloc(700, 1) });
    const { lb, port } = await startControlLb({
      global: { access_log: true },
      control: { listen: '127.0.0.1:0' },
      listeners: { web: { listen: '127.0.0.1:0', groups: [{ backends: [at(a.port)] }] } },
    });
    const scratch = scope.scratch();
    const dir = scratch.path;
    const example = readFileSync(path.join(ROOT, 'examples/mrtg.cfg'), 'utf8');
    expect(example).toMatch(/^Target\[\w+\]: `lb ctl --control 127\.0\.0\.1:8023 mrtg-bytes /m);
    expect(example).toMatch(/^Options\[\w+\]: .*\bgauge\b/m);
    const cfg = scratch.write(
      'mrtg.cfg',
      example
        .replace(/^WorkDir:.*$/m, `WorkDir: ${dir}`)
        .replaceAll('`lb ctl ', `\`${LB_CTL} `)
        .replaceAll('127.0.0.1:8023', `127.0.0.1:${port}`),
    );
    const targets = [...example.matchAll(/^Target\[(\w+)\]/gm)].map((m) => m[1]!);
    expect(targets).toEqual(expect.arrayContaining(['lb_web', 'lb_web_0_0', 'lb_web_0_0_conns', 'lb_current']));

    await traffic(lb, 2, 50, 0);
    await mrtg(dir, cfg);
    const first = lastReading(dir, 'lb_web');
    const held = await connectClient(lb.port()); // one connection open during the second reading
    await held.waitFor((r) => r.length === 700);
    await traffic(lb, 1, 50, 2);
    await nextSecond(first.time);
    await mrtg(dir, cfg);

    expect(lastReading(dir, 'lb_web')).toMatchObject({ in: 4 * 700, out: 3 * 50 });
    expect(lastReading(dir, 'lb_web_0_0')).toMatchObject({ in: 4 * 700, out: 3 * 50 });
    expect(lastReading(dir, 'lb_web_0_0_conns')).toMatchObject({ in: 4, out: 0 });
    expect(lastReading(dir, 'lb_current')).toMatchObject({ in: 1 });
    for (const t of targets) expect(lastReading(dir, t).time).toBeGreaterThan(first.time);
    await held.close();
  });
});
