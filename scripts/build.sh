#!/usr/bin/env bash
# The release build of the leadercron binary, and the only place its flags
# live: the Dockerfile's builder stage and deploy_test.go both run this
# script, so the tested binary and the shipped one cannot drift apart.
#
#   scripts/build.sh [-o OUTPUT]        (default: bin/leadercron)
#
# Environment: VERSION (default: git describe, else "dev") is stamped into
# internal/cli.Version; GOOS and GOARCH cross-compile as usual
# (GOOS=linux GOARCH=arm64 scripts/build.sh -o bin/leadercron-arm64).
#
# CGO_ENABLED=0 gives a static binary that runs on distroless/static;
# -trimpath drops local paths; -s -w drop the symbol table and DWARF.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bin/leadercron
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out=${2:?-o needs a path}; shift 2 ;;
    *) echo "usage: scripts/build.sh [-o OUTPUT]" >&2; exit 2 ;;
  esac
done

if [ -z "${VERSION:-}" ]; then
  VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi

CGO_ENABLED=0 exec go build -trimpath \
  -ldflags "-s -w -X github.com/leadercron/leadercron/internal/cli.Version=${VERSION}" \
  -o "$out" .
