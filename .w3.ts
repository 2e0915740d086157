import { writeFileSync } from 'node:fs';
import { loadConfigIsolated } from './src/config/isolate.ts';
const M = 4 * 1024 * 1024 - 64;
const shapes: Record<string, () => string> = {
  array: () => 'a = [' + '1,'.repeat(M / 2 - 8) + '1]\n',
  tables: () => { const p = []; let n = 0; for (let i = 0; n < M - 20; i++) { const s = `[t${i}]\n`; p.push(s); n += s.length; } return p.join(''); },
  keys: () => { const p = []; let n = 0; for (let i = 0; n < M - 20; i++) { const s = `k${i} = 1\n`; p.push(s); n += s.length; } return p.join(''); },
};
for (const which of process.argv.slice(2)) {
  writeFileSync('/tmp/x/w3.toml', shapes[which]!());
  const t = performance.now();
  const r = await loadConfigIsolated('/tmp/x/w3.toml', { resolve: 'skip' });
  console.log(which, (performance.now() - t).toFixed(0) + 'ms', r.ok ? 'ok' : r.diagnostics[0]!.code + ' ' + r.diagnostics[0]!.message.slice(0, 70));
}
