// `lb --help`. Kept beside the README's "Command line" section; a test checks that they agree.

export const USAGE = `usage:
  lb run FILE                 run the balancer in the foreground with a TOML config
  lb FILE                     the same
  lb --check FILE [--print | --json] [-q]
                              validate FILE and exit: 0 ok, 78 invalid, 66 unreadable
                              --print shows the compiled routing table, --json as JSON
  lb --print-toml BALANCE-ARGS
                              print the TOML config equivalent to a balance command line
  lb [-b addr] [-B addr] [-t sec] [-T sec] [-adfpH6] PORT CHANNEL... [!|%] CHANNEL...
                              balance's command line: run with these groups
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
let connections finish for up to global.drain_timeout, then exit 0.

exit codes: 0 ok, 64 usage, 66 config unreadable, 69 cannot listen, 77 permission denied, 78 config invalid.
`;
