# As anchors-lb.toml.tpl, with the access log off: run it as a second --proxy to see what the access
# log costs on the anchors' figures.
[global]
drain_timeout = "0"
access_log = false

[listeners.bench]
listen = "127.0.0.1:{listen_port}"

[[listeners.bench.groups]]
backends = ["127.0.0.1:{backend_port}"]
