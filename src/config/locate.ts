// Maps key paths of a TOML document to source positions, and finds where the document nests too deep.
//
// smol-toml reports positions only for syntax errors; schema and semantic errors must still name a line
// (`FILE:LINE:COL: PATH: message`). This scanner walks the text once and records where every key, table
// header and array element starts. It understands exactly the TOML structure that matters for paths:
// [tables], [[arrays of tables]], dotted keys, inline tables and arrays.
//
// It runs before the TOML parser, on any text (it never loops in place and never throws on bad input), so
// it is also where the nesting depth is bounded: the first key path deeper than the limit stops the scan
// and is reported with its line. Positions live in a tree of path segments, so the work is linear in the
// size of the text (recording every prefix of a dotted key as a formatted string was quadratic).

import { MAX_CONFIG_DEPTH } from './limits.ts';

export type PathSegment = string | number;
export interface Position {
  line: number;
  col: number;
}

/** The first key path deeper than the limit (up to one level past it), and where it starts. */
export interface TooDeep {
  readonly path: PathSegment[];
  readonly line: number;
  readonly col: number;
}

const BARE_KEY = /^[A-Za-z0-9_-]+$/;

/** `listeners.imap.groups[1].backends[0].port` */
export function formatPath(segments: readonly PathSegment[]): string {
  let out = '';
  for (const seg of segments) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += (out === '' ? '' : '.') + (BARE_KEY.test(seg) ? seg : JSON.stringify(seg));
  }
  return out;
}

interface PathNode {
  readonly parent: PathNode | null;
  readonly seg: PathSegment;
  readonly depth: number;
  kids: Map<PathSegment, PathNode> | null;
  /** Where the path starts (packed, see pack()), or -1. */
  pos: number;
  /**
   * Positions of the scalar elements of an array (packed; -1 for the elements that are nodes): a 4 MiB
   * array of numbers would otherwise cost a node, a map entry and a position object per element.
   */
  items: number[] | null;
  /** How many [[tables]] of this name so far (0: not an array of tables). */
  tables: number;
}

function newNode(parent: PathNode | null, seg: PathSegment): PathNode {
  return { parent, seg, depth: parent ? parent.depth + 1 : 0, kids: null, pos: -1, items: null, tables: 0 };
}

/** Line and column in one number: both are below 2^23 in a file of at most 4 MiB. */
const COLS = 2 ** 23;
const pack = (line: number, col: number): number => line * COLS + Math.min(col, COLS - 1);
const unpack = (packed: number): Position => ({ line: Math.floor(packed / COLS), col: packed % COLS });

function pathOf(node: PathNode): PathSegment[] {
  const out: PathSegment[] = [];
  for (let n: PathNode | null = node; n?.parent; n = n.parent) out.push(n.seg);
  return out.reverse();
}

/** Thrown inside the scanner to stop at the first path past the depth limit. */
const STOP = Symbol('too deep');

export class Locator {
  private readonly root: PathNode;
  /** Where the text first nests deeper than the limit (the scan stopped there), or null. */
  readonly tooDeep: TooDeep | null;

  constructor(source: string, maxDepth: number = MAX_CONFIG_DEPTH) {
    const scanner = new Scanner(source, maxDepth);
    try {
      scanner.scanDocument();
    } catch (err) {
      if (err !== STOP) throw err;
    }
    this.root = scanner.root;
    this.tooDeep = scanner.tooDeep;
  }

  /**
   * Position of the path, or of its nearest located ancestor (an inline value has no deeper keys). A
   * problem of the whole document (a missing top-level key) is placed at its first line.
   */
  find(segments: readonly PathSegment[]): Position | undefined {
    if (segments.length === 0) return { line: 1, col: 1 };
    let node = this.root;
    let found = -1;
    for (const seg of segments) {
      // ajv's paths turn every all-digit key into a number; the text may have it as a key.
      const next = node.kids?.get(seg) ?? (typeof seg === 'number' ? node.kids?.get(String(seg)) : undefined);
      if (!next) {
        const item = typeof seg === 'number' ? (node.items?.[seg] ?? -1) : -1;
        if (item >= 0) found = item; // a scalar element: nothing below it
        break;
      }
      node = next;
      if (node.pos >= 0) found = node.pos;
    }
    return found >= 0 ? unpack(found) : undefined;
  }
}

class Scanner {
  private i = 0;
  private line = 1;
  private col = 1;
  readonly root = newNode(null, '');
  tooDeep: TooDeep | null = null;

  private readonly src: string;
  private readonly maxDepth: number;

  constructor(src: string, maxDepth: number) {
    this.src = src;
    this.maxDepth = maxDepth;
  }

  scanDocument(): void {
    let current = this.root;
    while (!this.eof()) {
      const before = this.i;
      this.skipBlank(true);
      if (this.eof()) break;
      const pos = this.pos();
      if (this.src.startsWith('[[', this.i)) {
        this.advance(2);
        current = this.resolveHeader(this.parseKey(), true, pos);
        this.record(current, pos);
      } else if (this.peek() === '[') {
        this.advance(1);
        current = this.resolveHeader(this.parseKey(), false, pos);
        this.record(current, pos);
      } else {
        const node = this.keyPath(current, this.parseKey(), pos);
        this.skipBlank(false);
        if (this.peek() === '=') this.advance(1);
        this.skipBlank(false);
        this.scanValue(node);
      }
      this.skipToLineEnd();
      if (this.i === before) this.advance(1); // never loop in place, whatever the input
    }
  }

  /** The child of `node` for `seg`; past the depth limit, records where and stops the scan. */
  private child(node: PathNode, seg: PathSegment, pos: Position): PathNode {
    let next = node.kids?.get(seg);
    if (!next) {
      next = newNode(node, seg);
      if (next.depth > this.maxDepth) {
        this.tooDeep = { path: pathOf(next), line: pos.line, col: pos.col };
        throw STOP;
      }
      (node.kids ??= new Map()).set(seg, next);
    }
    return next;
  }

  private resolveHeader(segments: string[], isArray: boolean, pos: Position): PathNode {
    let node = this.root;
    segments.forEach((seg, idx) => {
      node = this.child(node, seg, pos);
      if (idx === segments.length - 1 && isArray) {
        node = this.child(node, node.tables++, pos);
      } else if (node.tables > 0) {
        node = this.child(node, node.tables - 1, pos); // [a.b] after [[a]] names the last element of a
      }
    });
    return node;
  }

  /** A dotted key `a.b.c = 1` defines a, a.b and a.b.c at the same place. */
  private keyPath(from: PathNode, segments: string[], pos: Position): PathNode {
    let node = from;
    for (const seg of segments) {
      node = this.child(node, seg, pos);
      this.record(node, pos);
    }
    return node;
  }

  private parseKey(): string[] {
    const segs: string[] = [];
    for (;;) {
      this.skipBlank(false);
      const c = this.peek();
      if (c === '"' || c === "'") segs.push(this.readQuoted());
      else {
        const start = this.i;
        while (this.i < this.src.length && isBareKeyChar(this.src.charCodeAt(this.i))) this.i++;
        this.col += this.i - start; // no newline in a bare key
        segs.push(this.src.slice(start, this.i));
      }
      this.skipBlank(false);
      if (this.peek() !== '.') break;
      this.advance(1);
    }
    this.skipBlank(false);
    while (this.peek() === ']') this.advance(1);
    return segs;
  }

  private scanValue(node: PathNode): void {
    const c = this.peek();
    if (this.src.startsWith('"""', this.i) || this.src.startsWith("'''", this.i)) {
      const fence = this.src.slice(this.i, this.i + 3);
      // Only a basic string has escapes: in a '''literal''' a backslash is just a character.
      const escapes = fence === '"""';
      this.advance(3);
      while (!this.eof() && !this.src.startsWith(fence, this.i)) this.advance(escapes && this.peek() === '\\' ? 2 : 1);
      this.advance(3);
      while (this.peek() === fence[0]) this.advance(1); // up to two quotes may end the content
    } else if (c === '"' || c === "'") {
      this.readQuoted();
    } else if (c === '[') {
      this.advance(1);
      for (let idx = 0; !this.eof(); idx++) {
        this.skipBlank(true);
        if (this.peek() === ']') break;
        const pos = this.pos();
        const before = this.i;
        const items = (node.items ??= []);
        const c = this.peek();
        if (c === '[' || c === '{') {
          const element = this.child(node, idx, pos);
          this.record(element, pos);
          items.push(-1);
          this.scanValue(element);
        } else {
          if (node.depth + 1 > this.maxDepth) this.child(node, idx, pos); // reports and stops
          items.push(pack(pos.line, pos.col));
          this.scanValue(node); // a scalar: it records nothing
        }
        this.skipBlank(true);
        if (this.peek() === ',') this.advance(1);
        else if (this.i === before) this.advance(1);
      }
      this.advance(1);
    } else if (c === '{') {
      this.advance(1);
      while (!this.eof()) {
        this.skipBlank(false);
        if (this.peek() === '}') break;
        const pos = this.pos();
        const before = this.i;
        const key = this.keyPath(node, this.parseKey(), pos);
        this.skipBlank(false);
        if (this.peek() === '=') this.advance(1);
        this.skipBlank(false);
        this.scanValue(key);
        this.skipBlank(false);
        if (this.peek() === ',') this.advance(1);
        else if (this.i === before) this.advance(1);
      }
      this.advance(1);
    } else {
      while (!this.eof() && !/[,\]}\n#]/.test(this.peek())) this.advance(1);
    }
  }

  /** A one-line quoted key or string; runs without escapes are sliced, not built a character at a time. */
  private readQuoted(): string {
    const quote = this.peek();
    this.advance(1);
    let out = '';
    let start = this.i;
    while (!this.eof() && this.peek() !== quote && this.peek() !== '\n') {
      if (quote === '"' && this.peek() === '\\') {
        out += this.src.slice(start, this.i) + (this.src[this.i + 1] ?? '');
        this.advance(2);
        start = this.i;
      } else {
        this.advance(1);
      }
    }
    out += this.src.slice(start, this.i);
    this.advance(1);
    return out;
  }

  private record(node: PathNode, pos: Position): void {
    if (node.pos < 0) node.pos = pack(pos.line, pos.col);
  }

  private skipBlank(newlines: boolean): void {
    while (!this.eof()) {
      const c = this.peek();
      if (c === ' ' || c === '\t' || c === '\r' || (newlines && c === '\n')) this.advance(1);
      else if (c === '#' && newlines) this.skipToLineEnd();
      else break;
    }
  }

  private skipToLineEnd(): void {
    const end = this.src.indexOf('\n', this.i);
    const to = end < 0 ? this.src.length : end;
    this.col += to - this.i;
    this.i = to;
  }

  private peek(): string {
    return this.src[this.i] ?? '';
  }

  private eof(): boolean {
    return this.i >= this.src.length;
  }

  private pos(): Position {
    return { line: this.line, col: this.col };
  }

  private advance(n: number): void {
    for (let k = 0; k < n && this.i < this.src.length; k++, this.i++) {
      if (this.src.charCodeAt(this.i) === 10) {
        this.line++;
        this.col = 1;
      } else {
        this.col++;
      }
    }
  }
}

/** A-Z a-z 0-9 _ - */
function isBareKeyChar(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x5f || c === 0x2d;
}
