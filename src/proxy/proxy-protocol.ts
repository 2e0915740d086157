// The PROXY protocol (HAProxy's doc/proxy-protocol.txt, versions 1 and 2): the header a proxy writes
// before any client byte so that the next hop learns the client's address. Pure and synchronous: an
// encoder for each version, and a strict incremental parser that is fed chunks as they arrive.
//
// The parser never holds more than one header's worth of bytes (107 for v1, 16 + a capped declared
// length for v2) and rejects at the first byte that cannot belong to a valid header, so a client that
// sends garbage is turned away at once instead of after the timeout.

import { isIPv4, isIPv6 } from 'node:net';

export type ProxyVersion = 'v1' | 'v2';

/** The two ends of a proxied TCP connection, as the header carries them. */
export interface ProxyAddresses {
  readonly srcAddr: string;
  readonly srcPort: number;
  readonly dstAddr: string;
  readonly dstPort: number;
}

/** A parsed header: `addresses` is null when the real connection's addresses stand (v1 UNKNOWN, v2 LOCAL or an unsupported family). */
export interface ProxyHeader {
  readonly version: ProxyVersion;
  readonly addresses: ProxyAddresses | null;
  /** Bytes the header took on the wire. */
  readonly length: number;
}

export type ParseStep =
  | { readonly state: 'more' }
  | { readonly state: 'done'; readonly header: ProxyHeader; /** Bytes after the header: the client's first data. */ readonly rest: Buffer }
  | { readonly state: 'error'; readonly reason: string };

/** Longest v1 line the receiver must accept, CRLF included (the spec's worst case). */
export const V1_MAX = 107;
/** The v2 signature: the first 12 bytes of every v2 header. */
export const V2_SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/**
 * Largest v2 address block + TLVs accepted. The field allows 65535; real senders put addresses and a few
 * TLVs (AWS and GCP add a VPC endpoint or a PSC id, HAProxy a few TLS fields), far below this.
 */
export const V2_MAX_DECLARED = 2048;
/** The longest header the parser accepts, either version: what a reader must look at, at most. */
export const HEADER_MAX = Math.max(V1_MAX, 16 + V2_MAX_DECLARED);

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const MORE: ParseStep = { state: 'more' };

// --- Encoding -----------------------------------------------------------------------------------------

/** "::ffff:a.b.c.d" is an IPv4 client on a dual-stack socket: the header calls it by its IPv4 address. */
function unmap(addr: string): string {
  return addr.startsWith('::ffff:') && isIPv4(addr.slice(7)) ? addr.slice(7) : addr;
}

/** Both addresses in one family: IPv4 if both are, else both as IPv6 (IPv4 mapped). Null if either is not an IP. */
function family(a: ProxyAddresses): { fam: 4 | 6; src: string; dst: string } | null {
  const src = unmap(a.srcAddr);
  const dst = unmap(a.dstAddr);
  const s = isIPv4(src) ? 4 : isIPv6(src) ? 6 : 0;
  const d = isIPv4(dst) ? 4 : isIPv6(dst) ? 6 : 0;
  if (s === 0 || d === 0) return null;
  if (s === 4 && d === 4) return { fam: 4, src, dst };
  return { fam: 6, src: canonicalIpv6(s === 4 ? `::ffff:${src}` : src), dst: canonicalIpv6(d === 4 ? `::ffff:${dst}` : dst) };
}

/**
 * A v1 line. Without addresses (or with addresses that are not IPs): "PROXY UNKNOWN\r\n", which the
 * receiver answers by using the real connection's addresses.
 */
export function encodeV1(a: ProxyAddresses | null): Buffer {
  const f = a && family(a);
  if (!a || !f) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  return Buffer.from(`PROXY TCP${f.fam} ${f.src} ${f.dst} ${a.srcPort} ${a.dstPort}\r\n`, 'latin1');
}

/** A v2 header: PROXY with TCP over IPv4/IPv6, or LOCAL (no addresses: the receiver uses the real ones). */
export function encodeV2(a: ProxyAddresses | null): Buffer {
  const f = a && family(a);
  if (!a || !f) {
    const out = Buffer.alloc(16);
    V2_SIG.copy(out, 0);
    out[12] = 0x20; // version 2, LOCAL
    out[13] = 0x00; // AF_UNSPEC, UNSPEC
    return out; // length 0
  }
  const addrLen = f.fam === 4 ? 4 : 16;
  const len = 2 * addrLen + 4;
  const out = Buffer.alloc(16 + len);
  V2_SIG.copy(out, 0);
  out[12] = 0x21; // version 2, PROXY
  out[13] = f.fam === 4 ? 0x11 : 0x21; // TCP over IPv4 / IPv6
  out.writeUInt16BE(len, 14);
  writeIp(out, 16, f.src, f.fam);
  writeIp(out, 16 + addrLen, f.dst, f.fam);
  out.writeUInt16BE(a.srcPort, 16 + 2 * addrLen);
  out.writeUInt16BE(a.dstPort, 18 + 2 * addrLen);
  return out;
}

export function encodeProxyHeader(version: ProxyVersion, a: ProxyAddresses | null): Buffer {
  return version === 'v1' ? encodeV1(a) : encodeV2(a);
}

function writeIp(out: Buffer, at: number, ip: string, fam: 4 | 6): void {
  if (fam === 4) {
    ip.split('.').forEach((octet, i) => (out[at + i] = Number(octet)));
    return;
  }
  ipv6Words(ip).forEach((w, i) => out.writeUInt16BE(w, at + 2 * i));
}

/** RFC 5952 text of an IPv6 address: hex words only (a dotted IPv4 tail becomes two words), no zone. */
function canonicalIpv6(ip: string): string {
  const bare = ip.includes('%') ? ip.slice(0, ip.indexOf('%')) : ip;
  return new URL(`http://[${bare}]/`).hostname.slice(1, -1);
}

/** The eight 16-bit words of an IPv6 address. */
function ipv6Words(ip: string): number[] {
  const halves = canonicalIpv6(ip).split('::');
  const head = halves[0] === '' ? [] : halves[0]!.split(':');
  const back = halves.length > 1 && halves[1] !== '' ? halves[1]!.split(':') : [];
  const fill = 8 - head.length - back.length;
  return [...head, ...Array<string>(fill).fill('0'), ...back].map((h) => parseInt(h, 16));
}

/** An IPv6 address from a header as the rest of lb writes client addresses: canonical, and an IPv4-mapped one as IPv4. */
function clientForm(ip: string): string {
  const c = canonicalIpv6(ip);
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(c);
  if (!m) return c;
  const hi = parseInt(m[1]!, 16);
  const lo = parseInt(m[2]!, 16);
  return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

function formatIpv6(buf: Buffer, at: number): string {
  const words: string[] = [];
  for (let i = 0; i < 8; i++) words.push(buf.readUInt16BE(at + 2 * i).toString(16));
  return clientForm(words.join(':'));
}

// --- Parsing ------------------------------------------------------------------------------------------

const DEC_PORT = /^(0|[1-9][0-9]{0,4})$/;
const DEC_OCTET = /^(0|[1-9][0-9]{0,2})$/;

/** Strict dotted quad: four decimal numbers 0..255, no leading zeros (the spec forbids them: octal). */
function strictIpv4(s: string): boolean {
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => DEC_OCTET.test(p) && Number(p) <= 255);
}

function port(s: string): number | null {
  if (!DEC_PORT.test(s)) return null;
  const n = Number(s);
  return n <= 65535 ? n : null;
}

function parseV1Line(line: string): { addresses: ProxyAddresses | null } | { error: string } {
  // line is without its CRLF, and starts with "PROXY ".
  const fields = line.slice(6).split(' ');
  const proto = fields[0];
  if (proto === 'UNKNOWN') return { addresses: null }; // the rest of the line is ignored, as the spec says
  if (proto !== 'TCP4' && proto !== 'TCP6') return { error: `v1: unknown protocol "${proto ?? ''}" (want TCP4, TCP6 or UNKNOWN)` };
  if (fields.length !== 5) return { error: `v1: ${fields.length - 1} fields after ${proto}, want 4 separated by single spaces` };
  const [, src, dst, sp, dp] = fields as [string, string, string, string, string];
  const valid = proto === 'TCP4' ? strictIpv4 : (s: string): boolean => isIPv6(s) && !s.includes('%') && !s.includes('.');
  if (!valid(src)) return { error: `v1: source address "${src}" is not ${proto === 'TCP4' ? 'an IPv4' : 'an IPv6'} address` };
  if (!valid(dst)) return { error: `v1: destination address "${dst}" is not ${proto === 'TCP4' ? 'an IPv4' : 'an IPv6'} address` };
  const srcPort = port(sp);
  const dstPort = port(dp);
  if (srcPort === null) return { error: `v1: source port "${sp}" is not a decimal 0..65535 without leading zeros` };
  if (dstPort === null) return { error: `v1: destination port "${dp}" is not a decimal 0..65535 without leading zeros` };
  const form = proto === 'TCP4' ? (s: string): string => s : clientForm;
  return { addresses: { srcAddr: form(src), srcPort, dstAddr: form(dst), dstPort } };
}

/**
 * Reads one PROXY header (v1 or v2, whichever the first byte says) from chunks as they arrive. After
 * 'done' or 'error' it must not be fed again. Holds at most V1_MAX or 16 + V2_MAX_DECLARED bytes.
 */
export class ProxyHeaderParser {
  private buf: Buffer = Buffer.alloc(0);
  private finished = false;

  push(chunk: Buffer): ParseStep {
    if (this.finished) return { state: 'error', reason: 'parser used after the header ended' };
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const step = this.step();
    if (step.state !== 'more') {
      this.finished = true;
      this.buf = Buffer.alloc(0);
    }
    return step;
  }

  /** The peer sent FIN (or the timeout fired) with a header incomplete. */
  truncated(): string {
    return this.buf.length === 0 ? 'no PROXY header (nothing received)' : `truncated PROXY header (${this.buf.length} bytes received)`;
  }

  private step(): ParseStep {
    const b = this.buf;
    if (b.length === 0) return MORE;
    if (b[0] === 0x50) return this.v1(b);
    if (b[0] === 0x0d) return this.v2(b);
    return { state: 'error', reason: 'not a PROXY header (wrong signature)' };
  }

  private v1(b: Buffer): ParseStep {
    const prefix = Math.min(b.length, V1_PREFIX.length);
    if (b.compare(V1_PREFIX, 0, prefix, 0, prefix) !== 0) return { state: 'error', reason: 'not a PROXY header (wrong v1 signature)' };
    const scan = Math.min(b.length, V1_MAX);
    for (let i = 0; i < scan; i++) {
      const c = b[i]!;
      if (c === 0x0a) return { state: 'error', reason: 'v1: line ends in a bare LF (CRLF required)' };
      if (c === 0x0d) {
        if (i + 2 > V1_MAX) return { state: 'error', reason: `v1: no CRLF within ${V1_MAX} bytes (oversized line)` };
        if (i + 1 >= b.length) return MORE;
        if (b[i + 1] !== 0x0a) return { state: 'error', reason: 'v1: CR not followed by LF' };
        const parsed = parseV1Line(b.toString('latin1', 0, i));
        if ('error' in parsed) return { state: 'error', reason: parsed.error };
        return { state: 'done', header: { version: 'v1', addresses: parsed.addresses, length: i + 2 }, rest: b.subarray(i + 2) };
      }
      if (c < 0x20 || c > 0x7e) return { state: 'error', reason: `v1: byte 0x${c.toString(16).padStart(2, '0')} is not printable US-ASCII` };
    }
    if (b.length >= V1_MAX) return { state: 'error', reason: `v1: no CRLF within ${V1_MAX} bytes (oversized line)` };
    return MORE;
  }

  private v2(b: Buffer): ParseStep {
    const sig = Math.min(b.length, V2_SIG.length);
    if (b.compare(V2_SIG, 0, sig, 0, sig) !== 0) return { state: 'error', reason: 'not a PROXY header (wrong v2 signature)' };
    if (b.length < 16) {
      if (b.length > 12 && b[12]! >> 4 !== 2) return { state: 'error', reason: `v2: version ${b[12]! >> 4}, want 2` };
      return MORE;
    }
    const verCmd = b[12]!;
    const famProto = b[13]!;
    const declared = b.readUInt16BE(14);
    if (verCmd >> 4 !== 2) return { state: 'error', reason: `v2: version ${verCmd >> 4}, want 2` };
    const cmd = verCmd & 0x0f;
    if (cmd > 1) return { state: 'error', reason: `v2: unknown command ${cmd} (want LOCAL or PROXY)` };
    const fam = famProto >> 4;
    const proto = famProto & 0x0f;
    if (fam > 3) return { state: 'error', reason: `v2: unknown address family ${fam}` };
    if (proto > 2) return { state: 'error', reason: `v2: unknown transport protocol ${proto}` };
    if (declared > V2_MAX_DECLARED) return { state: 'error', reason: `v2: declared length ${declared} above the ${V2_MAX_DECLARED}-byte limit (oversized header)` };
    const need = fam === 1 ? 12 : fam === 2 ? 36 : fam === 3 ? 216 : 0;
    // Checked before waiting for the block: a length too short for its family is wrong whatever follows.
    if (cmd === 1 && proto !== 0 && declared < need) {
      return { state: 'error', reason: `v2: declared length ${declared} is shorter than the ${need}-byte address block of family ${fam}` };
    }
    const total = 16 + declared;
    if (b.length < total) return MORE;
    const rest = b.subarray(total);
    // LOCAL (a health check of the sender's), UNSPEC, UNIX or datagrams: the real addresses stand (the
    // spec lets a receiver fall back to them for valid combinations it does not use).
    if (cmd === 0 || fam === 0 || proto !== 1 || fam === 3) {
      return { state: 'done', header: { version: 'v2', addresses: null, length: total }, rest };
    }
    let addresses: ProxyAddresses;
    if (fam === 1) {
      const ip = (at: number): string => `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
      addresses = { srcAddr: ip(16), dstAddr: ip(20), srcPort: b.readUInt16BE(24), dstPort: b.readUInt16BE(26) };
    } else {
      addresses = { srcAddr: formatIpv6(b, 16), dstAddr: formatIpv6(b, 32), srcPort: b.readUInt16BE(48), dstPort: b.readUInt16BE(50) };
    }
    return { state: 'done', header: { version: 'v2', addresses, length: total }, rest };
  }
}

/** Parses a whole buffer at once (tests, tools). */
export function parseProxyHeader(data: Buffer): ParseStep {
  return new ProxyHeaderParser().push(data);
}
