# lb with one data-plane worker, for the per-core comparison with node-pipe in anchors.sh.
[global]
drain_timeout = "0"
workers = 1

[listeners.bench]
listen = "127.0.0.1:{listen_port}"

[[listeners.bench.groups]]
backends = ["127.0.0.1:{backend_port}"]
