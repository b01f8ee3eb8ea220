#!/usr/bin/env bash
# Builds the real Consul agent pinned in tools/consul/go.mod and prints the
# path of the binary. The binary is cached outside git, keyed by the pinned
# version and the hash of tools/consul/go.sum, so the 5-8 minute build runs
# once per machine. Override the cache folder with XDG_CACHE_HOME.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/leadercron
version=$(awk '$1=="github.com/hashicorp/consul" {print $2; exit}' "$root/tools/consul/go.mod")
sum=$(sha256sum "$root/tools/consul/go.sum" | cut -c1-12)
bin="$cache/consul-$version-$sum"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "building consul $version into $bin (first time only, 5-8 minutes)" >&2
  start=$(date +%s)
  (cd "$root/tools/consul" && GOFLAGS=-mod=mod go build -trimpath -o "$bin.tmp" github.com/hashicorp/consul)
  mv "$bin.tmp" "$bin"
  echo "built consul in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
