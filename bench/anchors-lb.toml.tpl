# lb config for the shared anchors harness (../shared/bench/anchors.sh --proxy-config lb=bench/anchors-lb.toml.tpl):
# one listener to the harness's one backend, every setting at its default (access log on: the harness
# sends lb's stderr to a file), except drain_timeout: the harness stops lb after each run and would
# otherwise wait on open connections for up to 30 s.
[global]
drain_timeout = "0"

[listeners.bench]
listen = "127.0.0.1:{listen_port}"

[[listeners.bench.groups]]
backends = ["127.0.0.1:{backend_port}"]
