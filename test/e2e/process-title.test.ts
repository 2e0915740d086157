// A running lb is called "lb" by the system (process.title): `pgrep lb`, `ps`, `top` and `systemctl
// status` find it by that name, not as "node" or Node's "MainThread". The real CLI process.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { hasTool, runToEnd, startCliLb, useControlScope } from '../helpers/control.ts';

const scope = useControlScope();

describe('process title', () => {
  it('is "lb" in /proc/PID/comm and cmdline, and pgrep finds it', async () => {
    const file = scope.scratch().write(
      'title.toml',
      ['[listeners.web]', 'listen = "127.0.0.1:0"', '[[listeners.web.groups]]', 'backends = ["127.0.0.1:9"]', ''].join('\n'),
    );
    const lb = await startCliLb(['run', file]);
    const pid = lb.proc.pid!;
    expect(readFileSync(`/proc/${pid}/comm`, 'utf8')).toBe('lb\n');
    expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0]).toBe('lb');
    if (hasTool('pgrep')) {
      const found = await runToEnd('pgrep', ['-x', 'lb']);
      expect(found.stdout.split('\n')).toContain(String(pid));
    }
  });
});
