#!/usr/bin/env node
// The `lb` command: config checking, running, and balance's own command line.

import { parseArgs } from 'node:util';
import pkg from '../../package.json' with { type: 'json' };
import { formatDiagnostic, type Diagnostic } from '../config/diagnostics.ts';
import { buildTable, loadConfigFile, type PipelineResult } from '../config/pipeline.ts';
import { tableSummary, type RoutingTable } from '../config/table.ts';
import { docToToml, tableToDoc } from '../config/to-toml.ts';
import { formatDuration, formatHostPort } from '../config/values.ts';
import { Exit, LbError } from '../errors.ts';
import { Runtime } from '../runtime.ts';
import { BalanceArgsError, parseBalanceArgs } from './balance-args.ts';
import { USAGE } from './usage.ts';

export const VERSION: string = pkg.version;

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

const stdio: Io = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
};

class UsageError extends Error {}

/** Runs one `lb` invocation. Returns the exit code; a started balancer resolves only when it stops. */
export async function main(argv: readonly string[], io: Io = stdio): Promise<number> {
  try {
    return await dispatch(argv, io);
  } catch (err) {
    if (err instanceof UsageError || err instanceof BalanceArgsError) {
      io.err(`lb: ${err.message}\n\n${USAGE}`);
      return Exit.USAGE;
    }
    if (err instanceof LbError) {
      io.err(`lb: ${err.message} [${err.code}]\n`);
      return err.exitCode;
    }
    io.err(`lb: unexpected error: ${(err as Error).stack ?? String(err)}\n`);
    return Exit.SOFTWARE;
  }
}

async function dispatch(argv: readonly string[], io: Io): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) throw new UsageError('nothing to do');
  if (first === '--help' || first === '-h' || first === 'help') {
    io.out(USAGE);
    return Exit.OK;
  }
  if (first === '--version' || first === '-V') {
    io.out(`lb ${VERSION}\n`);
    return Exit.OK;
  }
  if (first === '--print-toml') return printToml(rest, io);
  if (first === 'run') return runFile(rest, io);
  if (argv.includes('--check')) return check(argv, io);
  // `lb FILE` runs a config file; anything else is balance's command line (`lb PORT CHANNEL...`).
  if (argv.length === 1 && !/^\d+$/.test(first) && !first.startsWith('-')) return runFile(argv, io);
  return runBalance(argv, io);
}

function reportDiagnostics(file: string, diags: readonly Diagnostic[], io: Io): void {
  for (const d of diags) io.err(formatDiagnostic(file, d) + '\n');
}

async function check(argv: readonly string[], io: Io): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...argv],
    options: {
      check: { type: 'boolean' },
      print: { type: 'boolean' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
    },
    allowPositionals: true,
    strict: false,
  });
  if (positionals.length !== 1) throw new UsageError('--check takes exactly one FILE');
  const file = positionals[0]!;
  const result = await loadConfigFile(file, { resolve: 'warning' });
  if (!result.ok) {
    reportDiagnostics(file, result.diagnostics, io);
    return result.exitCode;
  }
  reportDiagnostics(file, result.warnings, io);
  if (values.json) io.out(JSON.stringify(result.table, null, 2) + '\n');
  else if (values.print) io.out(describeTable(result.table));
  const s = tableSummary(result.table);
  if (!values.quiet && !values.json) {
    io.out(`${file}: ok (${s.listeners} listener${s.listeners === 1 ? '' : 's'}, ${s.groups} group${s.groups === 1 ? '' : 's'}, ${s.backends} backend${s.backends === 1 ? '' : 's'})\n`);
  }
  return Exit.OK;
}

/** `lb --check --print`: the compiled table for a human. */
export function describeTable(table: RoutingTable): string {
  let out = '';
  const c = table.control;
  if (c) {
    out += `control ${c.listen ? formatHostPort(c.listen.host, c.listen.port) : '-'}${c.socket ? ` socket ${c.socket}` : ''} admin=${c.admin}\n`;
  }
  for (const l of table.listeners) {
    out += `listener ${l.name} ${formatHostPort(l.listen.host, l.listen.port)}`;
    out += ` connect_timeout=${formatDuration(l.connectTimeoutMs)} idle_timeout=${formatDuration(l.idleTimeoutMs)}`;
    out += `${l.source ? ` source=${l.source}` : ''}${l.hashFailover ? ' hash_failover' : ''}${l.autodisable ? ' autodisable' : ''}`;
    out += `${l.packetDump !== 'off' ? ` packet_dump=${l.packetDump}` : ''}\n`;
    l.groups.forEach((g, gi) => {
      out += `  group ${gi} ${g.policy}\n`;
      g.backends.forEach((b, bi) => {
        const addr = b.address !== b.host ? ` (${b.address})` : '';
        out += `    ${bi} ${b.key}${addr} maxc=${b.maxc} weight=${b.weight}${b.enabled ? '' : ' disabled'}\n`;
      });
    });
  }
  return out;
}

async function runFile(argv: readonly string[], io: Io): Promise<number> {
  const { positionals } = parseArgs({ args: [...argv], options: {}, allowPositionals: true, strict: true });
  if (positionals.length !== 1) throw new UsageError('run takes exactly one FILE');
  const file = positionals[0]!;
  const result = await loadConfigFile(file, { resolve: 'error' });
  if (!result.ok) {
    reportDiagnostics(file, result.diagnostics, io);
    return result.exitCode;
  }
  reportDiagnostics(file, result.warnings, io);
  return serve(result.table, file, io);
}

/** balance's errors name the operand the user typed, not a TOML path they never wrote. */
function balanceTable(argv: readonly string[], io: Io, resolve: 'error' | 'warning'): Promise<PipelineResult | null> {
  const cmd = parseBalanceArgs(argv);
  return buildTable(cmd.doc, { resolve }).then((result) => {
    if (result.ok) return result;
    for (const d of result.diagnostics) {
      const operand = cmd.operandAt(d.path);
      io.err(`lb: ${operand ? `"${operand}": ` : ''}${d.message} [${d.code}]\n`);
    }
    return null;
  });
}

async function printToml(argv: readonly string[], io: Io): Promise<number> {
  const result = await balanceTable(argv, io, 'warning');
  if (!result?.ok) return Exit.USAGE;
  const header = `# Generated by lb --print-toml from: lb ${argv.join(' ')}\n\n`;
  io.out(docToToml(tableToDoc(result.table), header));
  return Exit.OK;
}

async function runBalance(argv: readonly string[], io: Io): Promise<number> {
  const result = await balanceTable(argv, io, 'error');
  if (!result?.ok) return Exit.USAGE;
  return serve(result.table, null, io);
}

/** Starts the balancer in the foreground; resolves with the exit code once it has stopped. */
async function serve(table: RoutingTable, configFile: string | null, io: Io): Promise<number> {
  const runtime = new Runtime(table, { configFile });
  await runtime.start();
  const where = runtime.boundAddresses().map((b) => `${b.name}=${b.address}`).join(' ');
  io.err(`lb ${VERSION} listening on ${where} (pid ${process.pid})\n`);
  return new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      runtime.log.log('info', 'stopping', { signal });
      void runtime.shutdown().then(() => {
        process.removeListener('SIGHUP', hup);
        io.err(`lb ${VERSION} stopped\n`);
        resolve(Exit.OK);
      });
    };
    const hup = (): void => {
      void runtime.reload().then((r) => {
        if (!r.ok) reportDiagnostics(configFile ?? '-', r.diagnostics, io);
      });
    };
    process.on('SIGHUP', hup);
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}

const isEntry = process.argv[1] !== undefined && import.meta.filename === (await import('node:fs')).realpathSync(process.argv[1]);
if (isEntry) {
  // Exit explicitly: a stopped balancer may leave handles (stdin, the dump file) that would keep it alive.
  process.exit(await main(process.argv.slice(2)));
}
