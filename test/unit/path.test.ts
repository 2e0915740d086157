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

  it('what still connects in JS on a listener Node accepts for: send_proxy backends, queued clients, bytes after a PROXY header', async () => {
    const noAccept: PathInputs = { ...all, nativeAcceptOk: { ok: false, reason: 'turned off (LB_NATIVE_ACCEPT=off)' } };
    const l = await listener([{ backends: ['127.0.0.1:1'], send_proxy: 'v2' }], { queue: { max: 10 } });
    expect(listenerPath(l, noAccept)).toBe(
      'JS accept (turned off (LB_NATIVE_ACCEPT=off)) + native connect + splice; JS connect for send_proxy backends, queued clients',
    );
    expect(listenerPath(await listener([{ backends: ['127.0.0.1:1'] }], { accept_proxy: true }), noAccept)).toBe(
      'JS accept (turned off (LB_NATIVE_ACCEPT=off)) + native connect + splice; JS connect for clients whose first bytes came with the PROXY header',
    );
    expect(listenerPath(await listener([{ backends: ['127.0.0.1:1'] }]), noAccept)).toBe('JS accept (turned off (LB_NATIVE_ACCEPT=off)) + native connect + splice');
  });

  it('a queue, accept_proxy and send_proxy keep the native path: the addon holds waiters, reads and writes PROXY headers', async () => {
    expect(listenerPath(await listener([{ backends: ['127.0.0.1:1'] }], { queue: { max: 10 } }), all)).toBe('native accept + connect + splice');
    expect(listenerPath(await listener([{ backends: ['127.0.0.1:1'] }], { accept_proxy: true }), all)).toBe('native accept + connect + splice');
    const both = await listener([{ backends: ['127.0.0.1:1', { host: '127.0.0.1', port: 2, send_proxy: 'v1' }], send_proxy: 'v2' }], { accept_proxy: true, queue: { max: 10 } });
    expect(listenerPath(both, all)).toBe('native accept + connect + splice');
  });
});
