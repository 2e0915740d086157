// The chaos run's backends (bench/chaos.ts), in a helper process of their own (see ipc.ts), and the data
// both ends of an integrity stream generate and verify.
//
// Every backend port serves the same protocol: the first line a client sends (relayed by lb) says what
// the backend does with the connection, so one set of ports serves every phase and a reload can move
// clients between ports without changing what they get.
//
//   I UP DOWN SEED   integrity: read UP bytes and verify them against the stream SEED's upload, write the
//                    DOWN bytes of its download meanwhile, then a trailer (TRAILER_BYTES) and FIN
//   N SIZE           write SIZE bytes of 'n' and close first (a short request/response)
//   S                stream 1 MiB and FIN, whatever the client does (its half-close, its reset)
//   R                write 1000 bytes, then reset
//   H                write one greeting byte, then hold the connection idle until the peer closes it
//   F                firehose: write as fast as lb takes it, until the peer goes (slow-reading clients)
//   W                read slowly: one read every SLOW_READ_MS (slow backend behind a fast client)
//   (nothing)        hold: the idle-timeout connections never send a byte
//
// Run as a script it serves requests from the parent (start, stats).

import { createCipheriv, createHash, type Hash } from 'node:crypto';
import net, { type Server, type Socket } from 'node:net';
import { serveRequests } from './ipc.ts';
import { prng } from './prng.ts';

// ------------------------------------------------------------------------------------- stream data

/**
 * 4 MiB of pseudo-random bytes, the same in every process (AES-CTR of zeros under a fixed key): streams
 * are slices of it at offsets and lengths drawn from a per-stream PRNG, so a receiver regenerates what it
 * should get and compares byte by byte, and a chunk lost, repeated or moved shows as a difference.
 */
const POOL_BYTES = 4 << 20;
const SEG_MAX = 192 << 10;
export const POOL: Buffer = (() => {
  const c = createCipheriv('aes-128-ctr', Buffer.from('lb-chaos-pool-16'), Buffer.alloc(16));
  return Buffer.concat([c.update(Buffer.alloc(POOL_BYTES)), c.final()]);
})();

/** The bytes of one direction of one integrity stream, handed out piece by piece. */
export class StreamGen {
  remaining: number;
  private readonly rng: () => number;
  private segOff = 0;
  private segLeft = 0;

  constructor(seed: number, total: number) {
    this.rng = prng(seed);
    this.remaining = total;
  }

  /** The next piece, at most `max` bytes (empty once the stream is done); a view of POOL, never a copy. */
  next(max: number): Buffer {
    if (this.remaining === 0) return POOL.subarray(0, 0);
    if (this.segLeft === 0) {
      this.segOff = Math.floor(this.rng() * (POOL_BYTES - SEG_MAX));
      this.segLeft = 1 + Math.floor(this.rng() * SEG_MAX);
    }
    const n = Math.min(max, this.segLeft, this.remaining);
    const piece = POOL.subarray(this.segOff, this.segOff + n);
    this.segOff += n;
    this.segLeft -= n;
    this.remaining -= n;
    return piece;
  }
}

export const uploadSeed = (seed: number): number => (Math.imul(seed, 2654435761) ^ 0x55aa55aa) >>> 0;
export const downloadSeed = (seed: number): number => (Math.imul(seed, 2246822519) ^ 0x33cc33cc) >>> 0;

/** Checks received bytes against the stream they should be: differing, extra and (at the end) missing bytes. */
export class StreamCheck {
  readonly hash: Hash = createHash('sha256');
  differing = 0;
  extra = 0;
  received = 0;
  private readonly gen: StreamGen;

  constructor(seed: number, total: number) {
    this.gen = new StreamGen(seed, total);
  }

  get done(): boolean {
    return this.gen.remaining === 0;
  }

  get missing(): number {
    return this.gen.remaining;
  }

  feed(chunk: Buffer): void {
    this.received += chunk.length;
    this.hash.update(chunk);
    let rest = chunk;
    while (rest.length > 0) {
      if (this.gen.remaining === 0) {
        this.extra += rest.length;
        return;
      }
      const want = this.gen.next(rest.length);
      const got = rest.subarray(0, want.length);
      if (!got.equals(want)) for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) this.differing++;
      rest = rest.subarray(want.length);
    }
  }
}

/** After an integrity download: sha256 of the download sent, sha256 of the upload received, u32 differing, u32 missing. */
export const TRAILER_BYTES = 72;

/** Writes a stream's pieces to `sock` with backpressure; resolves once all are queued (false: socket gone). */
export async function writeStream(sock: Socket, gen: StreamGen, hash: Hash | null): Promise<boolean> {
  while (gen.remaining > 0) {
    if (sock.destroyed || sock.writableEnded) return false;
    const piece = gen.next(64 << 10);
    hash?.update(piece);
    if (!sock.write(piece)) {
      const ok = await new Promise<boolean>((resolve) => {
        const done = (v: boolean) => (): void => {
          sock.off('drain', onDrain);
          sock.off('close', onClose);
          resolve(v);
        };
        const onDrain = done(true);
        const onClose = done(false);
        sock.once('drain', onDrain);
        sock.once('close', onClose);
      });
      if (!ok) return false;
    }
  }
  return true;
}

// ------------------------------------------------------------------------------------------ backends

const N_BYTE = 0x6e;
const N_BUF = Buffer.alloc(1 << 20, N_BYTE);
const R_BUF = Buffer.alloc(1000, 0x72);
const STREAM_BYTES = 1 << 20;
const FIREHOSE_CAP = 1 << 30;
export const SLOW_READ_MS = 200;

const stats = {
  open: 0,
  accepted: 0,
  held: 0,
  firehoseWritten: 0,
  slowRead: 0,
  integrityUploadsBad: 0,
  errors: {} as Record<string, number>,
};

function countError(err: NodeJS.ErrnoException): void {
  const k = err.code ?? err.message;
  stats.errors[k] = (stats.errors[k] ?? 0) + 1;
}

function onIntegrity(sock: Socket, args: string[], rest: Buffer): void {
  const [up, down, seed] = args.map(Number) as [number, number, number];
  const check = new StreamCheck(uploadSeed(seed), up);
  const sentHash = createHash('sha256');
  let written = false;
  let trailed = false;
  const trailer = (): void => {
    if (trailed || !written || !check.done || sock.destroyed) return;
    trailed = true;
    const t = Buffer.alloc(TRAILER_BYTES);
    sentHash.digest().copy(t, 0);
    check.hash.digest().copy(t, 32);
    t.writeUInt32BE(Math.min(check.differing, 0xffffffff), 64);
    t.writeUInt32BE(Math.min(check.extra, 0xffffffff), 68);
    if (check.differing || check.extra) stats.integrityUploadsBad++;
    sock.end(t);
  };
  sock.on('data', (c: Buffer) => {
    if (trailed) check.extra += c.length; // lb delivered more than the client sent
    else {
      check.feed(c);
      trailer();
    }
  });
  if (rest.length) check.feed(rest);
  void writeStream(sock, new StreamGen(downloadSeed(seed), down), sentHash).then((ok) => {
    written = ok;
    trailer();
  });
}

function onFirehose(sock: Socket): void {
  let sent = 0;
  const pump = (): void => {
    while (!sock.destroyed && sent < FIREHOSE_CAP) {
      const off = (sent * 7919) % (POOL.length - (64 << 10));
      sent += 64 << 10;
      stats.firehoseWritten += 64 << 10;
      if (!sock.write(POOL.subarray(off, off + (64 << 10)))) return;
    }
    if (sent >= FIREHOSE_CAP) sock.end();
  };
  sock.on('drain', pump);
  sock.on('end', () => sock.destroy());
  sock.resume();
  pump();
}

function onSlowReader(sock: Socket, rest: Buffer): void {
  stats.slowRead += rest.length;
  sock.pause();
  sock.on('data', (c: Buffer) => {
    stats.slowRead += c.length;
    sock.pause();
  });
  const t = setInterval(() => sock.resume(), SLOW_READ_MS);
  sock.on('close', () => clearInterval(t));
  sock.on('end', () => sock.end());
}

function onConnection(sock: Socket): void {
  stats.open++;
  stats.accepted++;
  sock.setNoDelay(true);
  sock.on('error', countError);
  sock.on('close', () => stats.open--);
  let head: Buffer = Buffer.alloc(0);
  const onData = (c: Buffer): void => {
    head = head.length ? Buffer.concat([head, c]) : c;
    const nl = head.indexOf(0x0a);
    if (nl < 0) {
      if (head.length > 200) sock.destroy();
      return;
    }
    sock.off('data', onData);
    sock.off('end', onEarlyEnd);
    const [cmd = '', ...args] = head.subarray(0, nl).toString('latin1').split(' ');
    const rest = head.subarray(nl + 1);
    switch (cmd) {
      case 'I':
        onIntegrity(sock, args, rest);
        break;
      case 'N': {
        const size = Math.min(Number(args[0]) || 0, N_BUF.length);
        sock.on('end', () => sock.end());
        sock.resume();
        sock.end(N_BUF.subarray(0, size));
        break;
      }
      case 'S': {
        sock.resume(); // the client's FIN is noticed, and the stream goes on regardless
        void writeStream(sock, new StreamGen(Number(args[0]) || 1, STREAM_BYTES), null).then((ok) => ok && sock.end());
        break;
      }
      case 'R':
        sock.resume();
        sock.write(R_BUF, () => sock.resetAndDestroy());
        break;
      case 'H':
        stats.held++;
        sock.on('close', () => stats.held--);
        sock.on('end', () => sock.end());
        sock.resume();
        sock.write('h');
        break;
      case 'F':
        onFirehose(sock);
        break;
      case 'W':
        onSlowReader(sock, rest);
        break;
      default:
        sock.destroy();
    }
  };
  // A client that sends nothing (idle timeout) or only closes: end our side when lb ends its.
  const onEarlyEnd = (): void => void sock.end();
  sock.on('data', onData);
  sock.on('end', onEarlyEnd);
}

const servers: Server[] = [];

function listen(port: number): Promise<Server> {
  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, onConnection);
  server.on('error', () => undefined);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => resolve(server));
  });
}

async function start(args: { ports: number[] }): Promise<number[]> {
  for (const p of args.ports) servers.push(await listen(p));
  return args.ports;
}

export type PeerStats = typeof stats;

if (import.meta.main) {
  serveRequests({
    start,
    stats: (): PeerStats => stats,
  });
}
