#!/usr/bin/env bash
# Runs the example Go app and the sidecar next to it in standalone mode
# (LEADERCRON_LOCK=none: always leader, no Consul). Jobs fire within seconds;
# watch the sidecar's log and GET http://127.0.0.1:9090/status. Ctrl-C stops
# the sidecar first (it drains the app), then the app.
#
# The app serves its public port on 127.0.0.1:8080 and the job contract on
# a private one, 127.0.0.1:8081 (the sidecar's default LEADERCRON_APP_URL).
# Both read the trigger secret from the same file, generated here: every
# trigger is signed, and the app refuses unsigned ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/demo-app" ./examples/go/demo-app
go build -o "$bin/leadercron" .
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$bin/trigger-secret"
export LEADERCRON_TRIGGER_SECRET_FILE="$bin/trigger-secret"

"$bin/demo-app" -listen 127.0.0.1:8080 -trigger-listen 127.0.0.1:8081 &
app=$!

export LEADERCRON_LOCK=none
export LEADERCRON_SERVICE=${LEADERCRON_SERVICE:-demo}
export LEADERCRON_LOG_FORMAT=${LEADERCRON_LOG_FORMAT:-text}
export LEADERCRON_JOB_HELLO=${LEADERCRON_JOB_HELLO:-"*/5 * * * * *"}
export LEADERCRON_JOB_SEND_REPORT=${LEADERCRON_JOB_SEND_REPORT:-"@every 15s timeout=10s"}
"$bin/leadercron" validate
"$bin/leadercron" &
sidecar=$!

stop() {
  kill -TERM "$sidecar" 2>/dev/null || true
  wait "$sidecar" || true
  kill -TERM "$app" 2>/dev/null || true
  wait "$app" || true
}
trap 'stop; rm -rf "$bin"' INT TERM EXIT
wait "$sidecar"
