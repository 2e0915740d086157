// Shared helpers for tests that drive `lb` in-process: capture its output, give it files to read.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface LbResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs one `lb ARGV` invocation in this process and returns its exit code and everything it printed.
 * main.ts is imported on first use, not at the top: a `vi.mock` factory that imports this module for
 * runtimeThatMustNotStart() would otherwise wait on main.ts, which waits on the mocked runtime.ts.
 */
export async function runLb(argv: readonly string[]): Promise<LbResult> {
  const { main } = await import('../../src/cli/main.ts');
  let stdout = '';
  let stderr = '';
  const code = await main(argv, {
    out: (text) => void (stdout += text),
    err: (text) => void (stderr += text),
  });
  return { code, stdout, stderr };
}

export interface ScratchDir {
  readonly path: string;
  /** Writes `text` to `name` inside the directory and returns the file's full path. */
  write(name: string, text: string): string;
  remove(): void;
}

/** A fresh directory under os.tmpdir(); call remove() in afterAll. */
export function scratchDir(): ScratchDir {
  const path = mkdtempSync(join(tmpdir(), 'lb-test-'));
  return {
    path,
    write(name, text) {
      const file = join(path, name);
      writeFileSync(file, text);
      return file;
    },
    remove() {
      rmSync(path, { recursive: true, force: true });
    },
  };
}

/**
 * A stand-in for src/runtime.ts, for `vi.mock('../../src/runtime.ts', ...)` in tests that call `main` on
 * paths that would start the balancer if the config were (wrongly) accepted: they fail instead of binding.
 */
export function runtimeThatMustNotStart(): { Runtime: new (...args: unknown[]) => never } {
  return {
    Runtime: class {
      constructor() {
        throw new Error('test reached Runtime: lb was about to start a balancer');
      }
    } as unknown as new (...args: unknown[]) => never,
  };
}

/** Escapes text for use inside a RegExp. */
export function re(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
