// `lb --help`. The README's "Command line" section embeds this text; a test keeps the two identical.

export const USAGE = `usage:
  lb run FILE                 run the balancer in the foreground with a TOML config
  lb FILE                     the same
  lb --check FILE [--print | --json] [-q]
                              validate FILE and exit: 0 ok, 78 invalid, 66 unreadable
                              (--print: the compiled routing table; --json: the same as JSON)
  lb demo [--port N] [--control-port N]
                              a demo: three built-in backends, a listener (8888) and the control port (8023)
  lb ctl [--control HOST:PORT | --socket PATH | --config FILE] [--token-file FILE] COMMAND [ARGS...]
                              send one command to a running lb's control port (default 127.0.0.1:8023);
                              over TCP, --token-file (or the config's token_file) sends "auth" first,
                              for commands above read; exit 0 ok, 1 the command failed, 69 cannot connect
  lb --print-toml BALANCE-ARGS
                              print the TOML config equivalent to a balance command line (with the
                              same control socket, so lb -c/-i and lb ctl --config FILE reach it)
  lb --config-reference       print every config key with its type, default and meaning
  lb [-b addr] [-B addr] [-t sec] [-T sec] [-adfpH6] PORT CHANNEL... [!|%] CHANNEL...
                              balance's command line: run with these groups
  lb [-b addr] -c COMMAND PORT | lb [-b addr] -i PORT
                              balance's shell: one command, or interactive, to an instance started that way
  lb --help | --version

balance's command line:
  CHANNEL          host[:port[:maxc]], [v6addr][:port[:maxc]] or host::maxc; port defaults to PORT
  !                ends a round-robin group       %   ends a hash group (the last group is round robin)
  -b addr          listen on this address (default: all addresses, IPv4 and IPv6)
  -B addr          source address for connections to backends
  -t sec           connect timeout (default 5)      -T sec   idle timeout (default: none)
  -a               autodisable backends whose connect fails, until enabled by an operator
  -H               hash failover: try the next backend of a hash group when the hashed one is unusable
  -p               packet dump in balance's format on stdout
  -d -f -6 -M      accepted for compatibility (lb always runs in the foreground and logs to stderr)

signals: SIGHUP re-reads FILE (a broken file keeps the running config); SIGTERM/SIGINT stop accepting,
let connections finish for up to global.drain_timeout, then exit 0. A signal that arrives while lb starts
acts once it has started: several SIGHUPs are one reload, and SIGTERM/SIGINT win over them.

exit codes: 0 ok, 64 usage, 66 config unreadable, 69 cannot listen or reach the control port,
70 internal error, 71 other system error, 73 cannot create a file or directory (read-only, missing),
77 permission denied, 78 config invalid. A failure is one line: cause [LB_CODE]; what to do
(LB_DEBUG=1 adds a stack trace).
`;

/** The hint that ends every usage error: the whole text is one command away, not in the way. */
export const USAGE_HINT = "; see 'lb --help' for more";

/**
 * Node's own option-parser errors (util.parseArgs) in our words, naming the option as typed; null for
 * anything else. Node's texts talk about `--b <value>` for `-b` and suggest `--` tricks.
 */
export function optionErrorMessage(err: unknown): string | null {
  const e = err as { code?: unknown; message?: unknown };
  if (typeof e?.code !== 'string' || !e.code.startsWith('ERR_PARSE_ARGS_') || typeof e.message !== 'string') return null;
  const quoted = /'([^']*)'/.exec(e.message)?.[1] ?? '';
  // Node writes `--b <value>` for what was typed as `-b`: one-letter options are short ones here.
  const name = quoted.split(' ')[0]!.replace(/^-+/, '');
  const option = name.length === 1 ? `-${name}` : `--${name}`;
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${option}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return /argument missing/.test(e.message) ? `option ${option} needs a value` : `option ${option} takes no value`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument "${quoted}"`;
    default:
      return null;
  }
}
