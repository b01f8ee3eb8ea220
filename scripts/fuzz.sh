#!/usr/bin/env bash
# Runs each Go fuzz target for a bounded time, one after the other:
# FUZZTIME each (default 30s; any `go test -fuzztime` value, such as 2m or
# 10000x). Their seed corpora already run as ordinary tests in
# scripts/test.sh; this explores beyond them.
#
# A failing input is saved under <package>/testdata/fuzz/<target>/ and
# then runs as a regression test under go test: fix the bug, keep the file.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZTIME=${FUZZTIME:-30s}

# package and target
targets=(
  "./internal/config FuzzParseJob"            # one LEADERCRON_JOB_* value: schedule and options
  "./internal/appclient FuzzDrainAnswer"      # the app's answer to POST /drain
  "./examples/go/jobs FuzzParseRequest"       # the Go app package's parse of a trigger
)

for entry in "${targets[@]}"; do
  read -r pkg name <<<"$entry"
  # A target that is gone would otherwise "pass" by fuzzing nothing.
  if ! listed=$(go test -list "^${name}\$" "$pkg" 2>&1) || ! grep -qx "$name" <<<"$listed"; then
    echo "fuzz: no target $name in $pkg:" >&2
    echo "$listed" >&2
    exit 1
  fi
  echo "== $name ($pkg, $FUZZTIME)"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg"
done
