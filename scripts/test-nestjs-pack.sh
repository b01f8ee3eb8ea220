#!/usr/bin/env bash
# Proves the *packed* NestJS package, as a user gets it from the registry:
#
#  1. npm pack examples/nestjs (its prepack builds dist/); the tarball must
#     hold dist/index.js, dist/index.d.ts, package.json and README.md, and no
#     sources, tests or demo app;
#  2. a fresh Nest app, a copy of examples/nestjs/test/fixtures/consumer-app
#     (whose src/*.ts files must be the ones README.md shows, byte for byte),
#     installs the tarball with its peers from the registry, compiles with
#     tsc and runs its unit test (the job method called directly);
#  3. the app runs next to the real sidecar in standalone mode, both with one
#     trigger secret from one file: the sidecar's LEADERCRON_JOB_CLEANUP must
#     make the app log that the job ran; then SIGTERM to the sidecar must
#     drain the app and exit 0.
#
# Usage: scripts/test-nestjs-pack.sh [path/to/leadercron]   (built if not given)
# scripts/test-examples.sh calls it after `npm ci` in examples/nestjs.
# Needs node >= 20.19 with npm, and the npm registry (or a warm npm cache).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
pkg="$root/examples/nestjs"
fixture="$pkg/test/fixtures/consumer-app"

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "test-nestjs-pack: FAIL: $*" >&2
  for f in "$tmp"/*.log; do
    [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }
  done
  exit 1
}

# wait_for FILE REGEX SECONDS PID WHAT: until a line of FILE matches REGEX;
# fails when PID exits first or SECONDS pass. (The processes are external:
# their log is the event to wait for.)
wait_for() {
  local file=$1 re=$2 secs=$3 pid=$4 what=$5
  local end=$((SECONDS + secs))
  until grep -Eq -- "$re" "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || fail "$what: the process exited before it happened"
    [ "$SECONDS" -lt "$end" ] || fail "$what: not seen within ${secs}s"
    sleep 0.1
  done
}

# wait_exit PID SECONDS WHAT: sets exit_code to the exit status of PID (a
# child of this shell: not to be called in a $(...) subshell).
exit_code=
wait_exit() {
  local pid=$1 secs=$2 what=$3
  local end=$((SECONDS + secs))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$end" ] || fail "$what: still running after ${secs}s"
    sleep 0.1
  done
  exit_code=0
  wait "$pid" || exit_code=$?
  local p rest=()
  for p in "${pids[@]}"; do
    [ "$p" = "$pid" ] || rest+=("$p")
  done
  pids=("${rest[@]}")
}

nest_version() {
  node -p 'JSON.parse(require("fs").readFileSync("node_modules/@nestjs/core/package.json", "utf8")).version'
}

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

bin=${1:-}
if [ -z "$bin" ]; then
  echo "== build the sidecar"
  bin="$tmp/leadercron"
  go build -o "$bin" .
fi

echo "== npm pack (examples/nestjs; prepack builds dist/)"
[ -d "$pkg/node_modules" ] || (cd "$pkg" && npm ci --no-audit --no-fund --prefer-offline --loglevel=error)
tarball=$(cd "$pkg" && npm pack --pack-destination "$tmp" --json --loglevel=error 2>"$tmp/pack.log" |
  node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s)[0].filename));')
tarball="$tmp/$(basename "$tarball")"
[ -f "$tarball" ] || fail "npm pack did not write $tarball"
echo "$(basename "$tarball"): $(wc -c <"$tarball") bytes"
files=$(tar -tzf "$tarball" | sort)
for want in package/package.json package/README.md package/dist/index.js package/dist/index.d.ts package/dist/leadercron.module.js package/dist/server.d.ts; do
  grep -qx "$want" <<<"$files" || fail "the tarball lacks $want; it holds: $files"
done
if unexpected=$(grep -v -E '^package/(package\.json|README\.md|LICENSE|dist/[a-z.]+\.(js|d\.ts))$' <<<"$files"); then
  fail "the tarball holds files it should not ship: $unexpected"
fi

echo "== the README shows the consumer app's code as it is tested"
if ! node - "$pkg/README.md" "$fixture/src" <<'EOF'
// Every ```ts block of the README whose first line is "// src/<file>" must be
// that fixture file exactly, and every fixture file must be shown.
const fs = require('node:fs');
const path = require('node:path');
const [readme, dir] = process.argv.slice(2);
const text = fs.readFileSync(readme, 'utf8');
const shown = new Map();
for (const m of text.matchAll(/^```ts\n(\/\/ (src\/[\w.-]+\.ts)\n[\s\S]*?)^```$/gm)) {
  shown.set(m[2], m[1]);
}
let bad = 0;
for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
  const want = fs.readFileSync(path.join(dir, f), 'utf8');
  const got = shown.get(`src/${f}`);
  if (got === undefined) {
    console.error(`README.md does not show src/${f} (a \`\`\`ts block starting with "// src/${f}")`);
    bad++;
  } else if (got !== want) {
    console.error(`README.md's src/${f} differs from ${path.join(dir, f)}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
EOF
then
  fail "README.md and the consumer app disagree"
fi

app="$tmp/app"
mkdir "$app"
cp -R "$fixture/package.json" "$fixture/package-lock.json" "$fixture/tsconfig.json" "$fixture/src" "$app/"
cd "$app"
# `npm install <tarball>`, not `npm ci`: the tarball is built by this run, so
# no committed lockfile can name it (its integrity changes with every build).
# The fixture's package-lock.json still pins the Nest packages; npm checks
# the package's peerDependencies against them and fails on a conflict.
echo "== npm install the tarball into a fresh Nest app"
npm install --no-audit --no-fund --prefer-offline --loglevel=error "$tarball" ||
  fail "npm install of the packed tarball failed"
node -e 'const p = JSON.parse(require("fs").readFileSync("node_modules/@leadercron/nestjs/package.json", "utf8")); console.log(`installed ${p.name}@${p.version}`)'
echo "== tsc (the consumer app)"
node_modules/.bin/tsc -p tsconfig.json || fail "the consumer app does not compile against the packed package"
echo "== the job's unit test (the method called directly)"
node --test dist/*.test.js >"$tmp/unit.log" 2>&1 || fail "the consumer app's unit test failed"
grep -E '^# (pass|fail)' "$tmp/unit.log"

# run_pair: the compiled consumer app next to the real sidecar in standalone
# mode, one trigger secret from one file; the job must run, and SIGTERM must
# make the sidecar drain the app and exit 0.
run_pair() {
  local secret="$tmp/trigger-secret" trigger_port public_port admin_port app_pid sidecar_pid
  node -e 'console.log(require("crypto").randomBytes(32).toString("hex"))' >"$secret"
  chmod 600 "$secret"
  trigger_port=$(free_port)
  public_port=$(free_port)
  admin_port=$(free_port)
  env -i PATH="$PATH" HOME="$HOME" NO_COLOR=1 \
    PORT="$public_port" \
    LEADERCRON_APP_LISTEN="127.0.0.1:$trigger_port" \
    LEADERCRON_TRIGGER_SECRET_FILE="$secret" \
    node dist/main.js >"$tmp/app.log" 2>&1 &
  app_pid=$!
  pids+=("$app_pid")
  wait_for "$tmp/app.log" 'serving the leadercron contract' 20 "$app_pid" "the app's trigger listener"
  grep -q 'triggers must be signed' "$tmp/app.log" || fail "the app does not require signed triggers"

  # The README's schedule is "0 */10 * * * *"; here every second, not to wait 10 minutes.
  env -i PATH="$PATH" HOME="$HOME" \
    LEADERCRON_LOCK=none \
    LEADERCRON_SERVICE=consumer-app \
    LEADERCRON_APP_URL="http://127.0.0.1:$trigger_port" \
    LEADERCRON_TRIGGER_SECRET_FILE="$secret" \
    LEADERCRON_LISTEN="127.0.0.1:$admin_port" \
    LEADERCRON_LOG_FORMAT=text \
    LEADERCRON_DRAIN_INTERVAL=200ms \
    LEADERCRON_JOB_CLEANUP="* * * * * *" \
    "$bin" >"$tmp/sidecar.log" 2>&1 &
  sidecar_pid=$!
  pids+=("$sidecar_pid")
  wait_for "$tmp/app.log" 'cleanup: removed [0-9]+ expired sessions' 20 "$sidecar_pid" "the cleanup job running in the app"
  grep -q 'request refused' "$tmp/app.log" && fail "the app refused a request from the sidecar"
  echo "the job ran: $(grep -E -o 'cleanup: removed [0-9]+ expired sessions \(slot [^)]*\)' "$tmp/app.log" | head -1)"

  kill -TERM "$sidecar_pid"
  wait_exit "$sidecar_pid" 30 "the sidecar after SIGTERM"
  [ "$exit_code" = 0 ] || fail "the sidecar exited $exit_code after SIGTERM, not 0"
  grep -q 'draining: no new runs accepted' "$tmp/app.log" || fail "the sidecar exited without draining the app"
  echo "SIGTERM: the sidecar drained the app and exited 0"

  kill -TERM "$app_pid"
  wait_exit "$app_pid" 30 "the app after SIGTERM"
}

echo "== the consumer app next to the sidecar (NestJS $(nest_version))"
run_pair

# The package's peer ranges include NestJS 11 (as @nestjs/schedule's do):
# the same app with NestJS 11 instead. `npm install`, not `npm ci`: this moves
# the fixture's locked Nest 12 to the newest 11.x on purpose.
echo "== the same app with NestJS 11"
npm install --no-audit --no-fund --prefer-offline --loglevel=error \
  '@nestjs/common@^11' '@nestjs/core@^11' '@nestjs/platform-express@^11' ||
  fail "npm install of NestJS 11 next to the packed package failed"
rm -rf dist
node_modules/.bin/tsc -p tsconfig.json || fail "the consumer app does not compile against the packed package with NestJS 11"
echo "== the consumer app next to the sidecar (NestJS $(nest_version))"
run_pair
echo "test-nestjs-pack: ok"
