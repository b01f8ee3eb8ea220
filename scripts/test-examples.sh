#!/usr/bin/env bash
# Tests the NestJS package @leadercron/nestjs (examples/nestjs) against the
# real sidecar: installs its npm dependencies from the committed
# package-lock.json (npm ci), builds the package (dist/) and its tests and
# demo app (build/), builds the sidecar binary, runs the package's tests
# plus the end-to-end tests (app + sidecar in standalone mode, triggers,
# route prefix, SIGTERM, drain), then scripts/test-nestjs-pack.sh: the
# *packed* tarball installed into a fresh Nest app (NestJS 12, then 11),
# compiled, and run behind the sidecar. Needs node >= 20.19 with npm, Go,
# and the npm registry or a warm npm cache; under CI=true a failed install
# fails. scripts/test.sh runs it; about 70 s once npm's cache is warm.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Like the Consul tests: without a usable Node this skips on a laptop (and
# says so) but fails under CI=true.
missing=
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing="node and npm not found"
elif ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  missing="node $(node --version) is older than 20.19"
fi
if [ -n "$missing" ]; then
  if [ "${CI:-}" = true ]; then
    echo "test-examples: $missing; the NestJS example needs node >= 20.19 with npm" >&2
    exit 1
  fi
  echo "test-examples: SKIPPED: $missing (CI=true makes this a failure)"
  exit 0
fi
echo "node $(node --version), npm $(npm --version 2>/dev/null)"

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
echo "== build the sidecar"
go build -o "$bin/leadercron" .

cd "$root/examples/nestjs"
echo "== npm ci (examples/nestjs)"
npm ci --no-audit --no-fund --prefer-offline --loglevel=error
echo "== tsc (the package, then its tests and demo app)"
npm run --silent build
npm run --silent build:test
echo "== node --test (examples/nestjs)"
LEADERCRON_BIN="$bin/leadercron" npm test --silent

cd "$root"
scripts/test-nestjs-pack.sh "$bin/leadercron"
