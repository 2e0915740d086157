// The PROXY protocol codec against the examples and rules of HAProxy's doc/proxy-protocol.txt.

import { describe, expect, it } from 'vitest';
import {
  encodeV1,
  encodeV2,
  parseProxyHeader,
  ProxyHeaderParser,
  V1_MAX,
  V2_MAX_DECLARED,
  V2_SIG,
  type ParseStep,
} from '../../src/proxy/proxy-protocol.ts';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const SIG = '0d0a0d0a000d0a515549540a';

function done(step: ParseStep) {
  if (step.state !== 'done') throw new Error(`expected a header, got ${JSON.stringify(step)}`);
  return step;
}

function reason(step: ParseStep): string {
  if (step.state !== 'error') throw new Error(`expected an error, got ${step.state}`);
  return step.reason;
}

/** Feeds `data` one byte at a time (a sender may fragment the header anywhere). */
function byteByByte(data: Buffer): ParseStep {
  const p = new ProxyHeaderParser();
  let step: ParseStep = { state: 'more' };
  for (let i = 0; i < data.length && step.state === 'more'; i++) step = p.push(data.subarray(i, i + 1));
  return step;
}

describe('v1 encoding', () => {
  it("writes the spec's TCP4 example", () => {
    const line = encodeV1({ srcAddr: '192.168.0.1', srcPort: 56324, dstAddr: '192.168.0.11', dstPort: 443 });
    expect(line.toString('latin1')).toBe('PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n');
  });

  it('writes TCP6 in canonical hex-word form, IPv4 on dual-stack sockets as TCP4', () => {
    expect(encodeV1({ srcAddr: '2001:db8:0:0:0:0:0:1', srcPort: 1, dstAddr: '::1', dstPort: 2 }).toString()).toBe('PROXY TCP6 2001:db8::1 ::1 1 2\r\n');
    expect(encodeV1({ srcAddr: '::ffff:127.0.0.2', srcPort: 5, dstAddr: '::ffff:127.0.0.1', dstPort: 6 }).toString()).toBe(
      'PROXY TCP4 127.0.0.2 127.0.0.1 5 6\r\n',
    );
    // One end IPv4, the other IPv6: both as IPv6, the IPv4 one mapped (no dotted tail in a v1 TCP6 line).
    expect(encodeV1({ srcAddr: '10.0.0.1', srcPort: 5, dstAddr: '::1', dstPort: 6 }).toString()).toBe('PROXY TCP6 ::ffff:a00:1 ::1 5 6\r\n');
  });

  it('writes UNKNOWN when there are no addresses', () => {
    expect(encodeV1(null).toString()).toBe('PROXY UNKNOWN\r\n');
  });

  it('the longest line fits the 107-byte limit', () => {
    const max = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const line = encodeV1({ srcAddr: max, srcPort: 65535, dstAddr: max, dstPort: 65535 });
    expect(line.length).toBe(104); // the spec's TCP6 worst case
    expect(done(parseProxyHeader(line)).header.addresses?.srcAddr).toBe(max);
  });
});

describe('v2 encoding', () => {
  it('TCP over IPv4: signature, 0x21, 0x11, length 12, addresses and ports in network order', () => {
    const h = encodeV2({ srcAddr: '192.168.0.1', srcPort: 56324, dstAddr: '192.168.0.11', dstPort: 443 });
    expect(h.toString('hex')).toBe(`${SIG}2111000c` + 'c0a80001' + 'c0a8000b' + 'dc04' + '01bb');
  });

  it('TCP over IPv6: family 0x21, length 36', () => {
    const h = encodeV2({ srcAddr: '2001:db8::1', srcPort: 1, dstAddr: '::1', dstPort: 2 });
    expect(h.subarray(12, 16).toString('hex')).toBe('21210024');
    expect(h.subarray(16, 32).toString('hex')).toBe('20010db8000000000000000000000001');
    expect(h.subarray(32, 48).toString('hex')).toBe('00000000000000000000000000000001');
    expect(h.length).toBe(16 + 36);
  });

  it('LOCAL with AF_UNSPEC and length 0 when there are no addresses (health checks)', () => {
    expect(encodeV2(null).toString('hex')).toBe(`${SIG}20000000`);
  });
});

describe('parsing v1', () => {
  it("reads the spec's example and hands back the bytes after it", () => {
    const step = done(parseProxyHeader(Buffer.from('PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n')));
    expect(step.header).toEqual({
      version: 'v1',
      length: 47,
      addresses: { srcAddr: '192.168.0.1', srcPort: 56324, dstAddr: '192.168.0.11', dstPort: 443 },
    });
    expect(step.rest.toString()).toBe('GET / HTTP/1.1\r\n');
  });

  it('reads a header split into single bytes', () => {
    const step = done(byteByByte(Buffer.from('PROXY TCP6 2001:DB8::1 ::ffff:7f00:2 65535 0\r\n')));
    expect(step.header.addresses).toEqual({ srcAddr: '2001:db8::1', srcPort: 65535, dstAddr: '127.0.0.2', dstPort: 0 });
    expect(step.rest.length).toBe(0);
  });

  it('UNKNOWN keeps the real addresses and ignores the rest of the line', () => {
    expect(done(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n'))).header.addresses).toBeNull();
    expect(done(parseProxyHeader(Buffer.from('PROXY UNKNOWN ffff:f::1 ::1 65535 65535\r\n'))).header.addresses).toBeNull();
  });

  it.each([
    ['a bare LF', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n', /bare LF/],
    ['a CR without LF', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX', /CR not followed by LF/],
    ['a lower-case keyword', 'proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n', /wrong signature/],
    ['two spaces', 'PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n', /fields/],
    ['an unknown protocol', 'PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n', /unknown protocol/],
    ['a leading zero in an octet', 'PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n', /source address/],
    ['an octet over 255', 'PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n', /destination address/],
    ['an IPv6 address in TCP4', 'PROXY TCP4 ::1 5.6.7.8 1 2\r\n', /source address/],
    ['an IPv4 address in TCP6', 'PROXY TCP6 ::1 5.6.7.8 1 2\r\n', /destination address/],
    ['a port over 65535', 'PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n', /source port/],
    ['a leading zero in a port', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n', /destination port/],
    ['a missing port', 'PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n', /fields/],
    ['a control byte', 'PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n', /printable/],
  ])('rejects %s', (_what, text, why) => {
    expect(reason(parseProxyHeader(Buffer.from(text, 'latin1')))).toMatch(why);
    expect(reason(byteByByte(Buffer.from(text, 'latin1')))).toMatch(why);
  });

  it('rejects a line with no CRLF in the first 107 bytes, having kept no more than that', () => {
    const long = Buffer.from(`PROXY UNKNOWN ${'a'.repeat(200)}\r\n`);
    expect(reason(parseProxyHeader(long))).toMatch(/no CRLF within 107/);
    const p = new ProxyHeaderParser();
    expect(p.push(long.subarray(0, V1_MAX - 1)).state).toBe('more');
    expect(reason(p.push(long.subarray(V1_MAX - 1, V1_MAX)))).toMatch(/no CRLF within 107/);
  });

  it('accepts a 107-byte line and rejects a 108-byte one', () => {
    const at107 = Buffer.from(`PROXY UNKNOWN ${'f'.repeat(V1_MAX - 16)}\r\n`);
    expect(at107.length).toBe(V1_MAX);
    expect(done(parseProxyHeader(at107)).header.length).toBe(V1_MAX);
    const at108 = Buffer.from(`PROXY UNKNOWN ${'f'.repeat(V1_MAX - 15)}\r\n`);
    expect(reason(parseProxyHeader(at108))).toMatch(/no CRLF within 107/);
  });

  it('rejects at the first wrong byte, before the line is complete', () => {
    const p = new ProxyHeaderParser();
    expect(reason(p.push(Buffer.from('PRO_')))).toMatch(/wrong v1 signature/);
    expect(reason(parseProxyHeader(Buffer.from('GET / HTTP/1.1\r\n')))).toMatch(/wrong signature/);
  });

  it('reports what it had when the peer gave up', () => {
    const p = new ProxyHeaderParser();
    expect(p.truncated()).toMatch(/nothing received/);
    p.push(Buffer.from('PROXY TCP4 1.2.3'));
    expect(p.truncated()).toBe('truncated PROXY header (16 bytes received)');
  });
});

describe('parsing v2', () => {
  const tcp4 = hex(`${SIG} 21 11 000c  c0a80001 c0a8000b dc04 01bb`);

  it('reads TCP over IPv4 and hands back the bytes after it', () => {
    const step = done(parseProxyHeader(Buffer.concat([tcp4, Buffer.from('hello')])));
    expect(step.header).toEqual({
      version: 'v2',
      length: 28,
      addresses: { srcAddr: '192.168.0.1', srcPort: 56324, dstAddr: '192.168.0.11', dstPort: 443 },
    });
    expect(step.rest.toString()).toBe('hello');
  });

  it('reads a header split into single bytes', () => {
    expect(done(byteByByte(tcp4)).header.addresses?.srcPort).toBe(56324);
  });

  it('reads TCP over IPv6, an IPv4-mapped source as IPv4', () => {
    const h = hex(`${SIG} 21 21 0024 00000000000000000000ffff7f000003 20010db8000000000000000000000001 1f90 0050`);
    expect(done(parseProxyHeader(h)).header.addresses).toEqual({ srcAddr: '127.0.0.3', srcPort: 8080, dstAddr: '2001:db8::1', dstPort: 80 });
  });

  it('skips TLVs after the addresses (the declared length covers them)', () => {
    const tlv = '04 0003 616263'; // PP2_TYPE_NOOP with 3 bytes
    const h = hex(`${SIG} 21 11 0012  7f000002 7f000001 1234 0050 ${tlv}`);
    const step = done(parseProxyHeader(Buffer.concat([h, Buffer.from('X')])));
    expect(step.header.length).toBe(16 + 18);
    expect(step.rest.toString()).toBe('X');
  });

  it('LOCAL: the real addresses stand, whatever address block follows', () => {
    expect(done(parseProxyHeader(hex(`${SIG} 20 00 0000`))).header.addresses).toBeNull();
    expect(done(parseProxyHeader(hex(`${SIG} 20 11 000c 7f000002 7f000001 1234 0050`))).header.addresses).toBeNull();
  });

  it('falls back to the real addresses for valid families it does not use (UNSPEC, UNIX, UDP)', () => {
    expect(done(parseProxyHeader(hex(`${SIG} 21 00 0000`))).header.addresses).toBeNull();
    expect(done(parseProxyHeader(Buffer.concat([hex(`${SIG} 21 31 00d8`), Buffer.alloc(216)]))).header.addresses).toBeNull();
    expect(done(parseProxyHeader(hex(`${SIG} 21 12 000c 7f000002 7f000001 1234 0050`))).header.addresses).toBeNull();
  });

  it.each([
    ['a wrong signature', hex(`0d0a0d0a000d0a5155495400 21 11 000c`), /wrong v2 signature/],
    ['version 1 in the version nibble', hex(`${SIG} 11 11 000c`), /version 1, want 2/],
    ['an unknown command', hex(`${SIG} 22 11 000c`), /unknown command 2/],
    ['an unknown family', hex(`${SIG} 21 41 000c`), /unknown address family 4/],
    ['an unknown transport', hex(`${SIG} 21 13 000c`), /unknown transport protocol 3/],
    ['a length too short for IPv4', hex(`${SIG} 21 11 000b 7f000002 7f000001 1234 00`), /shorter than the 12-byte/],
    ['a length too short for IPv6', hex(`${SIG} 21 21 000c 7f000002 7f000001 1234 0050`), /shorter than the 36-byte/],
    ['a declared length above the cap', hex(`${SIG} 21 11 ffff`), /above the 2048-byte limit/],
  ])('rejects %s as soon as it shows', (_what, bytes, why) => {
    expect(reason(parseProxyHeader(bytes))).toMatch(why);
  });

  it('waits for the whole declared length, holding at most 16 + the cap', () => {
    const p = new ProxyHeaderParser();
    const h = Buffer.concat([hex(`${SIG} 21 11`), Buffer.from([V2_MAX_DECLARED >> 8, V2_MAX_DECLARED & 0xff]), hex('7f000002 7f000001 1234 0050')]);
    expect(p.push(h).state).toBe('more');
    expect(p.push(Buffer.alloc(V2_MAX_DECLARED - 13)).state).toBe('more');
    expect(done(p.push(Buffer.alloc(2))).rest.length).toBe(1);
  });

  it('a signature prefix is "more", then the wrong byte is an error', () => {
    const p = new ProxyHeaderParser();
    expect(p.push(V2_SIG.subarray(0, 5)).state).toBe('more');
    expect(reason(p.push(Buffer.from([0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0b])))).toMatch(/wrong v2 signature/);
  });
});

describe('round trips', () => {
  const cases = [
    { srcAddr: '127.0.0.2', srcPort: 40000, dstAddr: '127.0.0.1', dstPort: 143 },
    { srcAddr: '2001:db8::2', srcPort: 1, dstAddr: 'fe80::1', dstPort: 65535 },
  ];
  it.each(cases)('v1 and v2 carry %o unchanged', (a) => {
    expect(done(parseProxyHeader(encodeV1(a))).header.addresses).toEqual(a);
    expect(done(parseProxyHeader(encodeV2(a))).header.addresses).toEqual(a);
  });
});
