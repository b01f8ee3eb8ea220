#!/usr/bin/env bash
# The project's whole test suite, as the README promises and CI runs it:
# formatting, vet, staticcheck, then every test with the race detector
# against a real Consul agent (built once from tools/consul and cached).
#
# go test runs with -json through tools/testreport, which prints what plain
# go test prints and then one summary of the skipped tests, by reason and
# package: a test that skips (no Consul on a laptop, say) is visible, not
# hidden behind "ok". With CI=true a missing Consul fails instead.
#
# The fast loop, without Consul, the binary builds or the fault suite, is
# plain `go test -short ./...`: every test that needs a Consul agent or
# runs the built sidecar skips under -short (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."

CONSUL_BIN=$(scripts/consul.sh)
export CONSUL_BIN
echo "consul: $CONSUL_BIN ($("$CONSUL_BIN" version | head -1))"

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './tools/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "== examples (NestJS module and its end-to-end test with the sidecar)"
scripts/test-examples.sh

echo "== monitoring (alert rules with promtool, the Grafana dashboard against a real scrape)"
scripts/test-monitoring.sh

echo "== go test -race"
# The summary of skipped tests is printed last, whatever happens after.
SKIP_SUMMARY=$(mktemp)
trap 'if [ -s "$SKIP_SUMMARY" ]; then echo "== skipped tests"; cat "$SKIP_SUMMARY"; fi; rm -f "$SKIP_SUMMARY"' EXIT
# The fault-injection suite writes its per-scenario table here, so that a
# passing run shows it too (go test prints a passing package's log only
# with -v).
LEADERCRON_FAULT_REPORT=$(mktemp)
export LEADERCRON_FAULT_REPORT
go test -race -count=1 -json "$@" ./... | go run ./tools/testreport -summary "$SKIP_SUMMARY"
if [ -s "$LEADERCRON_FAULT_REPORT" ]; then
  echo "== fault-injection summary"
  cat "$LEADERCRON_FAULT_REPORT"
fi
rm -f "$LEADERCRON_FAULT_REPORT"
unset LEADERCRON_FAULT_REPORT  # the sidecar refuses unknown LEADERCRON_ variables

echo "== bench (quick mode: the harness still works; slow figures do not fail it)"
scripts/bench.sh -quick
