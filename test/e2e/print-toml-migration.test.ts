// Migrating from balance's command line: `lb --print-toml ARGS` writes a config with the control socket
// that `lb ARGS` would serve, so an lb run from the file is reached as before by balance's shell
// (`lb -c COMMAND PORT`) and by `lb ctl --config FILE`. Real processes, a real Unix socket.

import { describe, expect, it } from 'vitest';
import { lbCli, startCliLb, useControlScope } from '../helpers/control.ts';

const scope = useControlScope();

describe('lb --print-toml', () => {
  it('gives a config whose instance lb -c and lb ctl --config reach', async () => {
    const dir = scope.scratch();
    const env = { ...process.env, XDG_RUNTIME_DIR: dir.path }; // the per-user socket directory, here
    // PORT names the instance's socket; the test binds the listener to a free port instead of PORT itself.
    const port = '18931';
    const printed = await lbCli(['--print-toml', port, '127.0.0.1:9', '!', '127.0.0.1:10'], { env });
    expect(printed.code).toBe(0);
    expect(printed.stdout).toMatch(/^\[control\]$/m);
    expect(printed.stdout).toContain(`socket = "${dir.path}/lb/lb.${port}.sock"`);
    const file = dir.write('migrated.toml', printed.stdout.replace(`listen = ${port}`, 'listen = "127.0.0.1:0"'));

    await startCliLb(['run', file], { env });
    const viaShell = await lbCli(['-c', 'show', port], { env });
    expect(viaShell.stderr).toBe('');
    expect(viaShell.code).toBe(0);
    expect(viaShell.stdout).toMatch(new RegExp(`^listener ${port} 127\\.0\\.0\\.1:\\d+ `));
    const viaCtl = await lbCli(['ctl', '--config', file, 'mrtg-conns', port], { env });
    expect(viaCtl.code).toBe(0);
    expect(viaCtl.stdout.split('\n')).toHaveLength(5); // MRTG's four lines and the final newline
  });
});
