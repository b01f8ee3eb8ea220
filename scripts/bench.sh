#!/usr/bin/env bash
# Benchmarks leadercron against the naive approach (api.Lock + robfig/cron,
# tools/naive) on one machine in one run, against a real Consul dev agent
# on loopback, and prints one Markdown table. See docs/benchmarks.md.
#
#   ./scripts/bench.sh            # full mode: 3 runs, medians (about 13 minutes on 2 cores)
#   ./scripts/bench.sh -runs 5    # more runs
#   ./scripts/bench.sh -quick     # a few slots, short windows (CI; under a minute)
#
# Exits non-zero when the harness breaks (no trigger, no handover), never
# because a figure is slow.
set -euo pipefail
cd "$(dirname "$0")/.."
CONSUL_BIN=${CONSUL_BIN:-$(scripts/consul.sh)}
export CONSUL_BIN
exec go run ./tools/bench "$@"
