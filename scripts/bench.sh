#!/usr/bin/env bash
# Benchmarks leadercron against the naive approach (api.Lock + robfig/cron,
# tools/naive) on one machine in one run, against a real Consul dev agent
# on loopback, and prints Markdown tables: the scale curve (10, 100 and
# 1,000 jobs), the other scenarios, and the targets, met or missed. See
# docs/benchmarks.md.
#
#   ./scripts/bench.sh            # full mode: 3 runs, medians (about 16 minutes on 2 cores)
#   ./scripts/bench.sh -runs 5    # more runs
#   ./scripts/bench.sh -quick     # small scale points, short windows (CI; under a minute)
#   ./scripts/bench.sh -leadercron-bin PATH   # a prebuilt leadercron (an older commit)
#
# Exits non-zero when the harness breaks (no trigger, no handover, a
# standby fires, the binary does not run), never because a figure is slow.
set -euo pipefail
cd "$(dirname "$0")/.."
CONSUL_BIN=${CONSUL_BIN:-$(scripts/consul.sh)}
export CONSUL_BIN
exec go run ./tools/bench "$@"
