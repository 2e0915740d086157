// The path line of `show info` (src/proxy/path.ts): the fastest path, or each step down with its reason.

import { describe, expect, it } from 'vitest';
import { listenerPath, type PathInputs } from '../../src/proxy/path.ts';
import { tableFrom, webDoc } from '../helpers/lb.ts';

const all: PathInputs = { splice: 'auto', spliceOk: { ok: true }, nativeConnectOk: { ok: true }, nativeAcceptOk: { ok: true } };

async function listener(groups: Parameters<typeof webDoc>[0], extra: Record<string, unknown> = {}) {
  return (await tableFrom(webDoc(groups, extra))).listeners[0]!;
}

describe('listenerPath', () => {
  it('native accept + connect + splice where everything allows it', async () => {
    expect(listenerPath(await listener([{ backends: ['127.0.0.1:1'] }]), all)).toBe('native accept + connect + splice');
  });

  it('each step down names its reason', async () => {
    const l = await listener([{ backends: ['127.0.0.1:1'] }]);
    expect(listenerPath(l, { ...all, splice: 'off' })).toBe('JS connect + JS relay (splice = "off")');
    expect(listenerPath(l, { ...all, spliceOk: { ok: false, reason: 'addon not built' } })).toBe('JS connect + JS relay (addon not built)');
    expect(listenerPath(l, { ...all, nativeConnectOk: { ok: false, reason: 'turned off (LB_NATIVE_CONNECT=off)' } })).toBe(
      'JS connect + splice (turned off (LB_NATIVE_CONNECT=off))',
    );
    expect(listenerPath(await listener([{ backends: ['127.0.0.1:1'] }], { packet_dump: 'hex' }), all)).toBe('JS connect + JS relay (packet_dump)');
  });

  it('what still connects in JS on a listener Node accepts for: send_proxy backends, queued clients', async () => {
    const l = await listener([{ backends: ['127.0.0.1:1'], send_proxy: 'v2' }], { queue: { max: 10 } });
    expect(listenerPath(l, all)).toBe('JS accept (send_proxy backends) + native connect + splice; JS connect for send_proxy backends, queued clients');
  });

  it('a queue alone keeps the native path: the addon holds the waiters', async () => {
    expect(listenerPath(await listener([{ backends: ['127.0.0.1:1'] }], { queue: { max: 10 } }), all)).toBe('native accept + connect + splice');
  });

  it('what Node still accepts for: each reason, and an addon that cannot accept', async () => {
    const web = (extra: Record<string, unknown>, group: Record<string, unknown> = {}) => listener([{ backends: ['127.0.0.1:1'], ...group }], extra);
    expect(listenerPath(await web({ accept_proxy: true }), all)).toBe(
      'JS accept (accept_proxy) + native connect + splice; JS connect for clients whose first bytes came with the PROXY header',
    );
    expect(listenerPath(await web({}, { send_proxy: 'v1' }), all)).toBe('JS accept (send_proxy backends) + native connect + splice; JS connect for send_proxy backends');
    expect(listenerPath(await web({}), { ...all, nativeAcceptOk: { ok: false, reason: 'turned off (LB_NATIVE_ACCEPT=off)' } })).toBe(
      'JS accept (turned off (LB_NATIVE_ACCEPT=off)) + native connect + splice',
    );
  });
});
