#!/usr/bin/env bash
# Tests the NestJS example (examples/nestjs) against the real sidecar:
# installs its npm dependencies from the committed package-lock.json
# (npm ci), compiles the TypeScript, builds the sidecar binary, and runs the
# module's tests plus the end-to-end test (app + sidecar in standalone mode,
# triggers, SIGTERM, drain). Needs node >= 20.19 with npm, and Go.
# scripts/test.sh runs it; it takes about 15 s once npm's cache is warm.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

command -v node >/dev/null && command -v npm >/dev/null || {
  echo "test-examples: node and npm are required (node >= 20.19)" >&2; exit 1; }
echo "node $(node --version), npm $(npm --version 2>/dev/null)"

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
echo "== build the sidecar"
go build -o "$bin/leadercron" .

cd "$root/examples/nestjs"
echo "== npm ci (examples/nestjs)"
npm ci --no-audit --no-fund --prefer-offline --loglevel=error
echo "== tsc"
npm run --silent build
echo "== node --test (examples/nestjs)"
LEADERCRON_BIN="$bin/leadercron" npm test --silent
