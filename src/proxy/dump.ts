// Packet dump of relayed bytes, for debugging a protocol through the balancer.
//
// When `packet_dump = "off"` the relay installs its plain handlers and none of this runs: the dump is a
// different data handler chosen at connection set-up, not a check on every chunk.

export type Direction = 'c>b' | 'b>c';

/** `hexdump -C` style block headed by connection id, direction and length (concurrent dumps stay apart). */
export function hexDump(connId: number, dir: Direction, chunk: Uint8Array): string {
  const arrow = dir === 'c>b' ? 'client -> backend' : 'backend -> client';
  let out = `#${connId} ${arrow} ${chunk.length} bytes\n`;
  for (let off = 0; off < chunk.length; off += 16) {
    const row = chunk.subarray(off, off + 16);
    let hex = '';
    let ascii = '';
    for (let i = 0; i < 16; i++) {
      if (i === 8) hex += ' ';
      if (i < row.length) {
        const b = row[i]!;
        hex += b.toString(16).padStart(2, '0') + ' ';
        ascii += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.';
      } else {
        hex += '   ';
      }
    }
    out += `${off.toString(16).padStart(8, '0')}  ${hex} |${ascii}|\n`;
  }
  return out + `${chunk.length.toString(16).padStart(8, '0')}\n`;
}

/**
 * balance -p's format: `-> N` (client→backend) or `-< N` header; printable ASCII as is with `\` doubled,
 * other bytes as `\XX` (upper-case hex); a line break after `\0A` and when a line passes 80 columns;
 * a line break ends every chunk. EOF is a chunk of length 0.
 */
export function balanceDump(dir: Direction, chunk: Uint8Array): string {
  let out = `${dir === 'c>b' ? '->' : '-<'} ${chunk.length}\n`;
  let col = 0;
  for (const b of chunk) {
    let piece: string;
    if (b === 0x5c) piece = '\\\\';
    else if (b >= 0x20 && b < 0x7f) piece = String.fromCharCode(b);
    else piece = '\\' + b.toString(16).toUpperCase().padStart(2, '0');
    out += piece;
    col += piece.length;
    if (b === 0x0a || col > 80) {
      out += '\n';
      col = 0;
    }
  }
  return out + '\n';
}
