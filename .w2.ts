import { loadConfigSource } from './src/config/pipeline.ts';
const M = Number(process.argv[3] ?? 1e6);
const shapes: Record<string, () => string> = {
  array: () => 'a = [' + '1,'.repeat(M / 2) + '1]\n',
  tables: () => { const p = []; let n = 0; for (let i = 0; n < M; i++) { const s = `[t${i}]\n`; p.push(s); n += s.length; } return p.join(''); },
  backends: () => { const p = []; let n = 0; for (let i = 0; n < M; i++) { const s = `"h${i % 10}x:1:z",`; p.push(s); n += s.length; } return '[listeners.w]\nlisten = 8080\n[[listeners.w.groups]]\nbackends = [' + p.join('') + '"a"]\n'; },
  inline: () => 'a = [' + '{b=[{c=1}]},'.repeat(M / 12) + '1]\n',
  aot: () => '[[a]]\nx=1\n'.repeat(M / 10),
};
const which = process.argv[2]!;
const text = shapes[which]!();
const t = performance.now();
const r = await loadConfigSource(text, { resolve: 'skip' });
console.log(which, text.length, (performance.now() - t).toFixed(0) + 'ms', r.ok ? 'ok' : r.diagnostics.length + ' ' + r.diagnostics[0]!.message.slice(0, 60));
