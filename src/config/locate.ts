// Maps key paths of a TOML document to source positions.
//
// smol-toml reports positions only for syntax errors; schema and semantic errors must still name a line
// (`FILE:LINE:COL: PATH: message`). This scanner walks the already-parsed (so well-formed) text once and
// records where every key, table header and array element starts. It understands exactly the TOML
// structure that matters for paths: [tables], [[arrays of tables]], dotted keys, inline tables and arrays.

export type PathSegment = string | number;
export interface Position {
  line: number;
  col: number;
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

export class Locator {
  private readonly positions = new Map<string, Position>();

  constructor(source: string) {
    new Scanner(source, this.positions).scanDocument();
  }

  /**
   * Position of the path, or of its nearest located ancestor (an inline value has no deeper keys). A
   * problem of the whole document (a missing top-level key) is placed at its first line.
   */
  find(segments: readonly PathSegment[]): Position | undefined {
    if (segments.length === 0) return { line: 1, col: 1 };
    for (let n = segments.length; n >= 1; n--) {
      const pos = this.positions.get(formatPath(segments.slice(0, n)));
      if (pos) return pos;
    }
    return undefined;
  }
}

class Scanner {
  private i = 0;
  private line = 1;
  private col = 1;
  private readonly arrayTables = new Map<string, number>();

  private readonly src: string;
  private readonly positions: Map<string, Position>;

  constructor(src: string, positions: Map<string, Position>) {
    this.src = src;
    this.positions = positions;
  }

  scanDocument(): void {
    let current: PathSegment[] = [];
    while (!this.eof()) {
      const before = this.i;
      this.skipBlank(true);
      if (this.eof()) break;
      const pos = this.pos();
      if (this.src.startsWith('[[', this.i)) {
        this.advance(2);
        current = this.resolveHeader(this.parseKey(), true);
        this.record(current, pos);
      } else if (this.peek() === '[') {
        this.advance(1);
        current = this.resolveHeader(this.parseKey(), false);
        this.record(current, pos);
      } else {
        const keyPath = [...current, ...this.parseKey()];
        this.recordPrefixes(keyPath, current.length, pos);
        this.skipBlank(false);
        if (this.peek() === '=') this.advance(1);
        this.skipBlank(false);
        this.scanValue(keyPath);
      }
      this.skipToLineEnd();
      if (this.i === before) this.advance(1); // never loop in place, whatever the input
    }
  }

  private resolveHeader(segments: string[], isArray: boolean): PathSegment[] {
    const out: PathSegment[] = [];
    segments.forEach((seg, idx) => {
      out.push(seg);
      const key = formatPath(out);
      const count = this.arrayTables.get(key);
      if (idx === segments.length - 1 && isArray) {
        this.arrayTables.set(key, (count ?? 0) + 1);
        out.push(count ?? 0);
      } else if (count !== undefined) {
        out.push(count - 1); // [a.b] after [[a]] names the last element of a
      }
    });
    return out;
  }

  private parseKey(): string[] {
    const segs: string[] = [];
    for (;;) {
      this.skipBlank(false);
      const c = this.peek();
      if (c === '"' || c === "'") segs.push(this.readQuoted());
      else {
        const start = this.i;
        while (!this.eof() && /[A-Za-z0-9_-]/.test(this.peek())) this.advance(1);
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

  private scanValue(path: PathSegment[]): void {
    const c = this.peek();
    if (this.src.startsWith('"""', this.i) || this.src.startsWith("'''", this.i)) {
      const fence = this.src.slice(this.i, this.i + 3);
      this.advance(3);
      while (!this.eof() && !this.src.startsWith(fence, this.i)) this.advance(this.peek() === '\\' ? 2 : 1);
      this.advance(3);
      while (this.peek() === fence[0]) this.advance(1); // up to two quotes may end the content
    } else if (c === '"' || c === "'") {
      this.readQuoted();
    } else if (c === '[') {
      this.advance(1);
      for (let idx = 0; !this.eof(); idx++) {
        this.skipBlank(true);
        if (this.peek() === ']') break;
        this.record([...path, idx], this.pos());
        const before = this.i;
        this.scanValue([...path, idx]);
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
        const keyPath = [...path, ...this.parseKey()];
        this.recordPrefixes(keyPath, path.length, pos);
        this.skipBlank(false);
        if (this.peek() === '=') this.advance(1);
        this.skipBlank(false);
        this.scanValue(keyPath);
        this.skipBlank(false);
        if (this.peek() === ',') this.advance(1);
        else if (this.i === before) this.advance(1);
      }
      this.advance(1);
    } else {
      while (!this.eof() && !/[,\]}\n#]/.test(this.peek())) this.advance(1);
    }
  }

  private readQuoted(): string {
    const quote = this.peek();
    this.advance(1);
    let out = '';
    while (!this.eof() && this.peek() !== quote && this.peek() !== '\n') {
      if (quote === '"' && this.peek() === '\\') {
        out += this.src[this.i + 1] ?? '';
        this.advance(2);
      } else {
        out += this.peek();
        this.advance(1);
      }
    }
    this.advance(1);
    return out;
  }

  private record(path: PathSegment[], pos: Position): void {
    const key = formatPath(path);
    if (!this.positions.has(key)) this.positions.set(key, pos);
  }

  /** A dotted key `a.b.c = 1` defines a, a.b and a.b.c at the same place. */
  private recordPrefixes(path: PathSegment[], from: number, pos: Position): void {
    for (let n = from + 1; n <= path.length; n++) this.record(path.slice(0, n), pos);
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
    while (!this.eof() && this.peek() !== '\n') this.advance(1);
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
      if (this.src[this.i] === '\n') {
        this.line++;
        this.col = 1;
      } else {
        this.col++;
      }
    }
  }
}
