# lb for ../shared/bench/anchors.sh (--proxy-config lb=bench/anchors/lb.toml.tpl): default settings
# (workers = "auto", splice = "auto", access log on) except a drain that does not hold up the next run.
[global]
drain_timeout = "0"

[listeners.bench]
listen = "127.0.0.1:{listen_port}"

[[listeners.bench.groups]]
backends = ["127.0.0.1:{backend_port}"]
