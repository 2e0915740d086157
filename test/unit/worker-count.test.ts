// `[global] workers = "auto"` (src/runtime.ts workerCount): one worker per two CPUs where the addon
// relays (each worker is then two busy threads), one per CPU where it does not; a number is taken as is.

import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { loadAddon } from '../../src/addon.ts';
import { workerCount } from '../../src/runtime.ts';

const cpus = Math.max(1, availableParallelism());
const addonRelays = process.env['LB_SPLICE'] !== 'off' && loadAddon().ok;

describe('workerCount', () => {
  it('takes a number as it is', () => {
    expect(workerCount(3, 'auto')).toBe(3);
    expect(workerCount(1, 'off')).toBe(1);
  });

  it('"auto" without the addon\'s relay (splice = "off"): one per CPU', () => {
    expect(workerCount('auto', 'off')).toBe(cpus);
  });

  it(`"auto" with the addon's relay: one per two CPUs, at least one (${addonRelays ? 'the addon loads here' : 'no addon here: one per CPU'})`, () => {
    expect(workerCount('auto', 'auto')).toBe(addonRelays ? Math.max(1, Math.floor(cpus / 2)) : cpus);
  });
});
