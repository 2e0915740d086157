#!/usr/bin/env node
// The `lb` command: config checking, running, and balance's own command line.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { formatDiagnostic, type Diagnostic } from '../config/diagnostics.ts';
import { formatPath } from '../config/locate.ts';
import { buildTable, loadConfigFile, type PipelineResult } from '../config/pipeline.ts';
import { tableSummary, type HealthEntry, type RoutingTable } from '../config/table.ts';
import { configReference } from '../config/reference.ts';
import { docToToml, tableToDoc } from '../config/to-toml.ts';
import { formatDuration, formatHostPort, parseListenAddress } from '../config/values.ts';
import { Exit } from '../errors.ts';
import { createLogger, flushLog, formatJson, type Fields, type Level } from '../log.ts';
import { Runtime } from '../runtime.ts';
import { balanceSocketPath, clientToken, interactive, sendCommand, type ControlAddress } from '../control/client.ts';
import { demoConfig, demoHelp, startDemoBackends } from './demo.ts';
import { BalanceArgsError, parseBalanceArgs, parseBalanceControl } from './balance-args.ts';
import { debugEnabled, explainFailure, formatFailure } from './failure.ts';
import { optionErrorMessage, USAGE, USAGE_HINT } from './usage.ts';
import { VERSION } from '../version.ts';
import { notifyReady, notifyReloading, type NotifyFailure } from './notify.ts';
import { SignalGate } from './signals.ts';
import { DnsDiscovery } from '../discovery/dns.ts';


export interface Io {
  out(text: string): void;
  err(text: string): void;
}

const stdio: Io = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
};

class UsageError extends Error {}

/**
 * What one invocation writes on stderr besides the log: the start-up and stop lines, config diagnostics,
 * the failure that ends it. Text until a config that asks for JSON lines is loaded; JSON lines after.
 */
class Reporter {
  json = false;
  readonly io: Io;

  constructor(io: Io) {
    this.io = io;
  }

  event(level: Level, event: string, fields: Fields, text: string): void {
    this.io.err((this.json ? formatJson(new Date().toISOString(), level, event, fields) : text) + '\n');
  }

  diagnostic(file: string, d: Diagnostic): void {
    const fields: Fields = { file, line: d.line, col: d.col, path: d.path.length ? formatPath(d.path) : undefined, code: d.code, message: d.message };
    this.event(d.severity === 'warning' ? 'warn' : 'error', 'config', fields, formatDiagnostic(file, d));
  }

  failure(err: unknown): number {
    const f = explainFailure(err);
    const stack = debugEnabled() && err instanceof Error && err.stack ? err.stack : undefined;
    this.event('error', 'failed', { code: f.code, error: f.message, hint: f.hint ?? undefined, exit: f.exitCode, stack }, formatFailure(f));
    if (stack && !this.json) this.io.err(stack + '\n');
    return f.exitCode;
  }
}

/** Node's option parser with our one-line messages instead of its own. */
function options<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (err) {
    const message = optionErrorMessage(err);
    if (message !== null) throw new UsageError(message);
    throw err;
  }
}

/** Runs one `lb` invocation. Returns the exit code; a started balancer resolves only when it stops. */
export async function main(argv: readonly string[], io: Io = stdio): Promise<number> {
  const out = new Reporter(io);
  try {
    return await dispatch(argv, out);
  } catch (err) {
    if (err instanceof UsageError || err instanceof BalanceArgsError) {
      io.err(`lb: ${err.message}${USAGE_HINT}\n`);
      return Exit.USAGE;
    }
    return out.failure(err);
  }
}

async function dispatch(argv: readonly string[], out: Reporter): Promise<number> {
  const io = out.io;
  const [first, ...rest] = argv;
  if (first === undefined) throw new UsageError('nothing to do');
  if (first === '--help' || first === '-h' || first === 'help' || argv.includes('--help')) {
    io.out(USAGE);
    return Exit.OK;
  }
  if (first === '--version' || first === '-V') {
    io.out(`lb ${VERSION}\n`);
    return Exit.OK;
  }
  if (first === '--print-toml') return printToml(rest, out);
  if (first === '--config-reference') {
    io.out(configReference());
    return Exit.OK;
  }
  if (first === 'run') return runFile(rest, out);
  if (first === 'ctl') return ctl(rest, out);
  if (first === 'demo') return demo(rest, out);
  if (argv.includes('--check')) return check(argv, out);
  // `lb FILE` runs a config file; anything else is balance's command line (`lb PORT CHANNEL...`).
  if (argv.length === 1 && !/^\d+$/.test(first) && !first.startsWith('-')) return runFile(argv, out);
  return runBalance(argv, out);
}

function reportDiagnostics(file: string, diags: readonly Diagnostic[], out: Reporter): void {
  for (const d of diags) out.diagnostic(file, d);
}

async function check(argv: readonly string[], out: Reporter): Promise<number> {
  const io = out.io;
  const { values, positionals } = options({
    args: [...argv],
    options: {
      check: { type: 'boolean' },
      print: { type: 'boolean' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError('--check takes exactly one FILE');
  const file = positionals[0]!;
  const result = await loadConfigFile(file, { resolve: 'warning' });
  if (!result.ok) {
    reportDiagnostics(file, result.diagnostics, out);
    return result.exitCode;
  }
  reportDiagnostics(file, result.warnings, out);
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
    out += `control ${c.listen ? formatHostPort(c.listen.host, c.listen.port) : '-'}${c.socket ? ` socket ${c.socket}` : ''} level=${c.level} socket_level=${c.socketLevel}${c.tokenFile ? ` token_file=${c.tokenFile}` : ''}\n`;
  }
  for (const l of table.listeners) {
    out += `listener ${l.name} ${formatHostPort(l.listen.host, l.listen.port)}`;
    out += ` connect_timeout=${formatDuration(l.connectTimeoutMs)} idle_timeout=${formatDuration(l.idleTimeoutMs)}`;
    out += `${l.sourceHost ? ` source=${l.sourceHost}${l.source !== l.sourceHost ? ` (${l.source})` : ''}` : ''}${l.hashFailover ? ' hash_failover' : ''}${l.autodisable ? ' autodisable' : ''}`;
    out += `${l.packetDump !== 'off' ? ` packet_dump=${l.packetDump}` : ''}`;
    out += `${l.queue ? ` queue=${l.queue.max}/${formatDuration(l.queue.timeoutMs)}` : ''}\n`;
    l.groups.forEach((g, gi) => {
      out += `  group ${gi} ${g.policy}${g.health ? ` health ${describeHealth(g.health)}` : ''}\n`;
      g.backends.forEach((b, bi) => {
        const addr = b.address !== b.host ? ` (${b.address})` : '';
        const health = b.health === g.health ? '' : b.health ? ` health ${describeHealth(b.health)}` : ' health off';
        const name = b.name !== b.key ? ` name=${b.name}` : '';
        out += `    ${bi} ${b.key}${addr}${name} maxc=${b.maxc} weight=${b.weight}${b.enabled ? '' : ' disabled'}${health}\n`;
      });
    });
  }
  return out;
}

function describeHealth(h: HealthEntry): string {
  const what = h.expect ? ('text' in h.expect ? `expect ${JSON.stringify(h.expect.text)}` : `expect /${h.expect.regex}/${h.expect.flags}`) : 'connect';
  return `every ${formatDuration(h.intervalMs)} timeout ${formatDuration(h.timeoutMs)} rise ${h.rise} fall ${h.fall} ${what}${h.port ? ` port ${h.port}` : ''}`;
}

async function runFile(argv: readonly string[], out: Reporter): Promise<number> {
  const { positionals } = options({ args: [...argv], options: {}, allowPositionals: true, strict: true });
  if (positionals.length !== 1) throw new UsageError('run takes exactly one FILE');
  const file = positionals[0]!;
  const result = await loadConfigFile(file, { resolve: 'error' });
  if (!result.ok) {
    reportDiagnostics(file, result.diagnostics, out);
    return result.exitCode;
  }
  out.json = result.table.global.logFormat === 'json';
  reportDiagnostics(file, result.warnings, out);
  return serve(result.table, file, out);
}

/** balance's errors name the operand the user typed, not a TOML path they never wrote. */
function balanceTable(
  argv: readonly string[],
  io: Io,
  resolve: 'error' | 'warning',
  withSocket = false,
): Promise<PipelineResult | null> {
  const cmd = parseBalanceArgs(argv);
  if (withSocket) {
    // balance's shell reached its instance through a per-port rendezvous; ours is a 0660 Unix socket in a 0700 directory.
    // The control server creates the socket's directory once the whole config is known to be good.
    cmd.doc.control = { socket: balanceSocketPath(cmd.port, cmd.bind), socket_level: 'admin' };
  }
  return buildTable(cmd.doc, { resolve }).then((result) => {
    if (result.ok) {
      // A backend name that does not resolve (it starts down and is retried) is said as balance's operand.
      for (const d of result.warnings) {
        const operand = cmd.operandAt(d.path);
        io.err(`lb: warning: ${operand ? `"${operand}": ` : ''}${d.message} [${d.code}]\n`);
      }
      return result;
    }
    for (const d of result.diagnostics) {
      const operand = cmd.operandAt(d.path);
      io.err(`lb: ${operand ? `"${operand}": ` : ''}${d.message} [${d.code}]${USAGE_HINT}\n`);
    }
    return null;
  });
}

async function printToml(argv: readonly string[], out: Reporter): Promise<number> {
  const io = out.io;
  // The same control socket `lb ARGS` serves: balance's `-c`/`-i` and `lb ctl --config FILE` reach the
  // instance the printed file runs, as they reached the one the command line ran.
  const result = await balanceTable(argv, io, 'warning', true);
  if (!result?.ok) return Exit.USAGE;
  const { port } = parseBalanceArgs(argv);
  const header =
    `# Generated by lb --print-toml from: lb ${argv.join(' ')}\n` +
    `# [control]: the socket that command line serves, so \`lb -c COMMAND ${port}\`, \`lb -i ${port}\` and\n` +
    `# \`lb ctl --config THIS-FILE COMMAND\` reach an lb run from this file (as the same user).\n\n`;
  io.out(docToToml(tableToDoc(result.table), header));
  return Exit.OK;
}

async function runBalance(argv: readonly string[], out: Reporter): Promise<number> {
  const io = out.io;
  const shell = parseBalanceControl(argv);
  if (shell) {
    const addr = { path: balanceSocketPath(shell.port, shell.bind) };
    if (shell.command === undefined) return interactive(addr, shell.port);
    return printReply(await sendCommand(addr, shell.command), io);
  }
  const result = await balanceTable(argv, io, 'error', true);
  if (!result?.ok) return Exit.USAGE;
  return serve(result.table, null, out);
}

async function demo(argv: readonly string[], out: Reporter): Promise<number> {
  const io = out.io;
  const { values } = options({
    args: [...argv],
    options: { port: { type: 'string', default: '8888' }, 'control-port': { type: 'string', default: '8023' } },
    strict: true,
  });
  const port = Number(values.port);
  const controlPort = Number(values['control-port']);
  if (!Number.isInteger(port) || !Number.isInteger(controlPort)) throw new UsageError('--port and --control-port take numbers');
  const backends = await startDemoBackends(3);
  const result = await buildTable(demoConfig(port, controlPort, backends.ports), { resolve: 'skip' });
  if (!result.ok) {
    await backends.close();
    reportDiagnostics('demo', result.diagnostics, out);
    return result.exitCode;
  }
  return serve(result.table, null, out, {
    started: (rt) => io.out(demoHelp(rt.boundAddresses()[0]!.address, `127.0.0.1:${rt.control?.port()}`, rt.table.control?.socket ?? '')),
    stopped: () => backends.close(),
  });
}

interface ServeHooks {
  started?(runtime: Runtime): void;
  stopped?(): Promise<void>;
}

/** Starts the balancer in the foreground; resolves with the exit code once it has stopped. */
async function serve(table: RoutingTable, configFile: string | null, out: Reporter, hooks: ServeHooks = {}): Promise<number> {
  const log = createLogger(table.global.logFormat, undefined, table.global.logLevel);
  const runtime = new Runtime(table, { configFile, log });
  // Handlers before the first bind (src/cli/signals.ts): a signal during start-up is held, not fatal.
  const gate = new SignalGate();
  const onHup = (): void => gate.signal('SIGHUP');
  const onTerm = (): void => gate.signal('SIGTERM');
  const onInt = (): void => gate.signal('SIGINT');
  process.on('SIGHUP', onHup);
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  const removeHandlers = (): void => {
    process.removeListener('SIGHUP', onHup);
    process.removeListener('SIGTERM', onTerm);
    process.removeListener('SIGINT', onInt);
  };
  // [global.dns]: backends given by name follow their records (src/discovery/); nothing without it.
  const discovery = new DnsDiscovery(runtime, runtime.log);
  try {
    await runtime.start();
  } catch (err) {
    removeHandlers();
    await hooks.stopped?.();
    throw err;
  }
  runtime.discovery = discovery; // reloads (SIGHUP or `reload`) expand names at once and re-sync it
  await discovery.start();
  const where = runtime.boundAddresses().map((b) => `${b.name}=${b.address}`).join(' ');
  const c = table.control;
  const controlAt = [
    ...(c?.listen ? [formatHostPort(c.listen.host ?? '*', runtime.control?.port() ?? c.listen.port)] : []),
    ...(c?.socket ? [c.socket] : []),
  ];
  const httpAt = runtime.http?.address();
  const control = (controlAt.length ? `; control ${controlAt.join(' ')}` : '') + (httpAt ? `; http ${formatHostPort(httpAt.host, httpAt.port)}` : '');
  const reportNotify = (f: NotifyFailure): void => out.event('error', 'notify', { code: f.code, error: f.error }, f.text);
  return new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      runtime.log.log('info', 'stopping', { signal });
      // Idempotent: a second signal during the drain waits for the same stop instead of killing lb.
      void discovery.stop();
      void runtime.shutdown().then(async () => {
        await hooks.stopped?.();
        removeHandlers();
        flushLog(); // the last access-log lines come before the "stopped" line
        out.json = runtime.log.format === 'json';
        out.event('info', 'stopped', { version: VERSION }, `lb ${VERSION} stopped`);
        resolve(Exit.OK);
      });
    };
    const reload = (): void => {
      // systemd (Type=notify): RELOADING=1 with the time, then READY=1 once the reload is over, either way.
      // READY=1 is sent after RELOADING=1 has been taken (each is a child process), never before it.
      const reloading = notifyReloading(reportNotify);
      void runtime.reload().then((r) => {
        flushLog();
        out.json = runtime.log.format === 'json';
        if (!r.ok) reportDiagnostics(configFile ?? '-', r.diagnostics, out);
        void reloading.then(() => notifyReady(reportNotify));
      });
    };
    runtime.onStopRequest = (reason) => stop(reason);
    out.event(
      'info', 'listening',
      { version: VERSION, listeners: where, workers: runtime.workers, control: controlAt.join(' ') || undefined, pid: process.pid },
      `lb ${VERSION} listening on ${where}; ${runtime.workers} worker${runtime.workers === 1 ? '' : 's'}${control} (pid ${process.pid})`,
    );
    hooks.started?.(runtime);
    void notifyReady(reportNotify); // lb.service: Type=notify
    // Signals held during start-up act now (a stop wins over reloads; several HUPs are one reload).
    gate.open({ stop, reload });
  });
}

function printReply(reply: { text: string; error: boolean }, io: Io): number {
  if (reply.text !== '') io.out(reply.text + '\n');
  return reply.error ? Exit.SOFTWARE : Exit.OK;
}

/** `lb ctl [--control HOST:PORT | --socket PATH | --config FILE] COMMAND [ARGS...]` */
async function ctl(argv: readonly string[], out: Reporter): Promise<number> {
  const io = out.io;
  const { values, positionals } = options({
    args: [...argv],
    options: {
      control: { type: 'string' }, socket: { type: 'string' }, config: { type: 'string' }, 'token-file': { type: 'string' }, help: { type: 'boolean' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    io.out(USAGE);
    return Exit.OK;
  }
  if (positionals.length === 0) throw new UsageError('ctl needs a COMMAND (try: lb ctl help)');
  let addr: ControlAddress = { host: '127.0.0.1', port: 8023 };
  if (values.socket) addr = { path: values.socket };
  else if (values.control) {
    const parsed = parseListenAddress(values.control);
    if (!parsed.ok) throw new UsageError(`--control: ${parsed.error}`);
    addr = { host: parsed.value.host ?? '127.0.0.1', port: parsed.value.port };
  } else if (values.config) {
    const result = await loadConfigFile(values.config, { resolve: 'skip' });
    if (!result.ok) {
      reportDiagnostics(values.config, result.diagnostics, out);
      return result.exitCode;
    }
    const c = result.table.control;
    if (!c || (!c.listen && !c.socket)) throw new UsageError(`${values.config} has no [control] section`);
    if (c.socket) addr = { path: c.socket };
    else {
      const host = c.listen!.host;
      addr = { host: host === null || host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host, port: c.listen!.port };
      // Over TCP a session starts at read: the config's token (if this user may read it) raises it.
      if (c.tokenFile && values['token-file'] === undefined) values['token-file'] = c.tokenFile;
    }
  }
  const tokenFile = values['token-file'];
  const token = tokenFile === undefined ? undefined : clientToken(tokenFile);
  return printReply(await sendCommand(addr, positionals.join(' '), { token }), io);
}

const isEntry = process.argv[1] !== undefined && import.meta.filename === (await import('node:fs')).realpathSync(process.argv[1]);
if (isEntry) {
  // `pgrep lb`, `ps`, `top` and `systemctl status` show "lb", not "node" or Node's "MainThread".
  process.title = 'lb';
  // Exit explicitly: a stopped balancer may leave handles (stdin, the dump file) that would keep it alive.
  process.exit(await main(process.argv.slice(2)));
}
