#!/usr/bin/env bash
# Runs ../shared/bench/anchors.sh with lb (default settings) and lb-w1 (one worker) as extra rows, on the
# project's Node 24 (node_modules/.bin first on the PATH). Extra arguments go to anchors.sh (--quick, ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ANCHORS="${ANCHORS:-$ROOT/../shared/bench/anchors.sh}"
export PATH="$ROOT/node_modules/.bin:$PATH"
exec bash "$ANCHORS" \
  --proxy "lb=node $ROOT/src/cli/main.ts run {config}" --proxy-config "lb=$ROOT/bench/anchors/lb.toml.tpl" \
  --proxy "lb-w1=node $ROOT/src/cli/main.ts run {config}" --proxy-config "lb-w1=$ROOT/bench/anchors/lb-w1.toml.tpl" \
  "$@"
