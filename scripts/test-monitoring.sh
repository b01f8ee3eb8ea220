#!/usr/bin/env bash
# Tests the monitoring examples: examples/prometheus/alerts.yml and
# examples/grafana/leadercron.json.
#
#  1. promtool check rules alerts.yml, and promtool test rules
#     alerts_test.yml (each rule on synthetic series, firing and quiet);
#     docs/metrics.md's alert table names exactly the file's alerts.
#  2. A real scrape: builds the sidecar and the Go demo app, starts a Consul
#     dev agent on loopback (free ports, in memory), one app and one sidecar
#     with a job every second, waits until the sidecar leads and 3 slots
#     fired, and saves GET /metrics.
#  3. scripts/check-dashboard.py: the dashboard is well-formed and has the
#     panels the issue asks for, and every metric name in its queries and in
#     the alert rules is in that scrape; promtool check rules on the
#     dashboard's queries (as generated recording rules) proves they parse.
#  4. Negative tests: the same check on copies with one metric name
#     misspelled (in the dashboard, in the alerts), with a bare histogram
#     name, without a required panel, with an undefined Grafana variable,
#     and with broken JSON must fail and say what is wrong.
#
# Needs Go, python3 and curl; promtool comes with Debian's `prometheus`
# package (.ci/run installs it). Without promtool the promtool steps are
# skipped, with a message, unless CI=true, which makes that a failure.
# Takes about 10 s once Consul is built (scripts/consul.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
started=$(date +%s%N)

for tool in go python3 curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "test-monitoring: $tool not found" >&2; exit 1
  fi
done
promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
  if [ "${CI:-}" = true ]; then
    echo "test-monitoring: promtool not found; install Debian's prometheus package (apt-get install --no-install-recommends prometheus)" >&2
    exit 1
  fi
  echo "test-monitoring: promtool not found: the promtool steps are SKIPPED (CI=true makes this a failure)"
fi

work=$(mktemp -d)
consul_pid= app_pid= sidecar_pid=
cleanup() {
  local p
  for p in "$sidecar_pid" "$app_pid" "$consul_pid"; do
    [ -n "$p" ] || continue
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# show_logs prints the logs of what this script started, for a failure.
show_logs() {
  local f
  for f in "$work"/*.log; do
    [ -e "$f" ] || continue
    echo "---- $(basename "$f") (last 30 lines)" >&2
    tail -30 "$f" >&2
  done
}
die() { echo "test-monitoring: $*" >&2; show_logs; exit 1; }

# shellcheck source=lib/ports.sh
. scripts/lib/ports.sh  # the working directory is the repository root

# wait_for DESCRIPTION SECONDS PID COMMAND...: polls COMMAND every 0.1 s
# until it succeeds; fails if PID exits first or time runs out.
wait_for() {
  local what=$1 secs=$2 pid=$3 i
  shift 3
  for (( i = 0; i < secs * 10; i++ )); do
    if "$@" 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$what: the process (pid $pid) exited"
    sleep 0.1
  done
  die "$what: not after ${secs}s"
}

if [ -n "$promtool" ]; then
  echo "== promtool check rules examples/prometheus/alerts.yml"
  "$promtool" check rules examples/prometheus/alerts.yml
  echo "== promtool test rules examples/prometheus/alerts_test.yml"
  "$promtool" test rules examples/prometheus/alerts_test.yml
fi

echo "== docs/metrics.md names exactly the alerts of alerts.yml"
rule_names=$(sed -nE 's/^[[:space:]]*-[[:space:]]*alert:[[:space:]]*([A-Za-z0-9_]+).*/\1/p' examples/prometheus/alerts.yml | sort -u)
doc_names=$(grep -oE '^\| `Leadercron[A-Za-z0-9_]+`' docs/metrics.md | tr -d '|` ' | sort -u)
[ -n "$rule_names" ] || die "no alert found in examples/prometheus/alerts.yml"
if [ "$rule_names" != "$doc_names" ]; then
  diff <(echo "$rule_names") <(echo "$doc_names") >&2 || true
  die "the alert table in docs/metrics.md (>) and the alerts in examples/prometheus/alerts.yml (<) differ"
fi
echo "ok: $(echo "$rule_names" | wc -l) alerts"

echo "== a real scrape: Consul dev agent, demo app, sidecar with a job every second"
CONSUL_BIN=${CONSUL_BIN:-$(scripts/consul.sh)}
go build -o "$work/leadercron" .
go build -o "$work/demo-app" ./examples/go/demo-app

free_port http_port; free_port serf_port; free_port server_port
free_port app_port; free_port public_port; free_port admin_port
"$CONSUL_BIN" agent -dev -node monitoring -bind 127.0.0.1 -client 127.0.0.1 \
  -http-port "$http_port" -dns-port -1 -grpc-port -1 -grpc-tls-port -1 \
  -serf-lan-port "$serf_port" -serf-wan-port -1 -server-port "$server_port" -log-level warn \
  -hcl 'ui_config { enabled = false }' >"$work/consul.log" 2>&1 &
consul_pid=$!
consul_ready() { curl -sf --max-time 1 "http://127.0.0.1:$http_port/v1/status/leader" | grep -q ':'; }
wait_for "Consul dev agent elected itself" 30 "$consul_pid" consul_ready

app_addr=127.0.0.1:$app_port
"$work/demo-app" -listen "127.0.0.1:$public_port" -trigger-listen "$app_addr" >"$work/app.log" 2>&1 &
app_pid=$!
wait_for "demo app answers" 20 "$app_pid" curl -sf --max-time 1 "http://$app_addr/healthz" -o /dev/null

admin=127.0.0.1:$admin_port
env CONSUL_HTTP_ADDR="127.0.0.1:$http_port" LEADERCRON_SERVICE=monitoring LEADERCRON_ID=monitoring-1 \
  LEADERCRON_LISTEN="$admin" LEADERCRON_APP_URL="http://$app_addr" LEADERCRON_LOG_FORMAT=text \
  LEADERCRON_JOB_HELLO="* * * * * *" \
  "$work/leadercron" >"$work/sidecar.log" 2>&1 &
sidecar_pid=$!

scrape() { curl -sf --max-time 2 "http://$admin/metrics" -o "$work/metrics.txt"; }
# 3 fired slots of `hello`: the sidecar leads, and every vector the
# dashboard uses has its children (trigger_duration_seconds gets its first
# at the first trigger).
fired_3() {
  scrape && awk '$1 == "leadercron_slots_total{job=\"hello\",outcome=\"fired\"}" && $2 >= 3 { ok = 1 } END { exit !ok }' "$work/metrics.txt"
}
wait_for "3 slots of job hello fired" 30 "$sidecar_pid" fired_3
scrape || die "GET http://$admin/metrics failed"
grep -qx 'leadercron_is_leader 1' "$work/metrics.txt" || die "the scrape does not show the sidecar leading: $(grep '^leadercron_is_leader' "$work/metrics.txt")"
echo "scraped $(grep -c '^leadercron_' "$work/metrics.txt") leadercron_* samples; $(grep -F 'outcome="fired"' "$work/metrics.txt")"

echo "== scripts/check-dashboard.py: dashboard and alerts against the scrape"
python3 scripts/check-dashboard.py --scrape "$work/metrics.txt" \
  --dashboard examples/grafana/leadercron.json --alerts examples/prometheus/alerts.yml \
  --promql-rules "$work/dashboard-queries.yml"
if [ -n "$promtool" ]; then
  echo "== promtool check rules on the dashboard's queries (valid PromQL)"
  "$promtool" check rules "$work/dashboard-queries.yml"
fi

echo "== negative tests: a misspelled name, a bare histogram, a missing panel must fail the check"
# expect_fail NAME dashboard|alerts ORIGINAL REPLACEMENT MESSAGE: copies the
# dashboard or the alerts with the sed pattern ORIGINAL replaced by
# REPLACEMENT, and requires the check to exit 1 with MESSAGE in its output.
expect_fail() {
  local name=$1 kind=$2 from=$3 to=$4 msg=$5 src dash=examples/grafana/leadercron.json alerts=examples/prometheus/alerts.yml rc=0
  if [ "$kind" = dashboard ]; then src=$dash; else src=$alerts; fi
  sed "s/$from/$to/g" "$src" >"$work/$name"
  cmp -s "$src" "$work/$name" && die "negative test $name: '$from' is not in $src, nothing was altered"
  if [ "$kind" = dashboard ]; then dash=$work/$name; else alerts=$work/$name; fi
  python3 scripts/check-dashboard.py --scrape "$work/metrics.txt" --dashboard "$dash" --alerts "$alerts" \
    >"$work/$name.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] || { cat "$work/$name.out" >&2; die "negative test $name: the check exited $rc, want 1"; }
  grep -qF -- "$msg" "$work/$name.out" || { cat "$work/$name.out" >&2; die "negative test $name: the output lacks: $msg"; }
  echo "ok: $name fails: $(grep -m1 -F -- "$msg" "$work/$name.out" | sed "s|$work/||")"
}
expect_fail misspelled-dashboard.json dashboard leadercron_slot_delay_seconds_bucket leadercron_slot_delay_second_bucket \
  "metric leadercron_slot_delay_second_bucket is not in the scrape"
# A misspelled name inside absent() is the worst kind: the alert would fire
# forever, or, under `or`, hide that the rule never looks at real series.
expect_fail misspelled-alerts.yml alerts 'absent(leadercron_is_leader)' 'absent(leadercron_is_leadr)' \
  "metric leadercron_is_leadr is not in the scrape"
expect_fail bare-histogram.json dashboard leadercron_trigger_duration_seconds_bucket leadercron_trigger_duration_seconds \
  "metric leadercron_trigger_duration_seconds is not in the scrape (leadercron_trigger_duration_seconds is a histogram"
expect_fail missing-panel.json dashboard '"title": "Consul errors"' '"title": "Consul"' \
  "no panel titled 'Consul errors'"
expect_fail undefined-variable.json dashboard 'exported_job=~\\"\$cronjob' 'exported_job=~\\"$cron_job' \
  'uses $cron_job, which the dashboard'"'"'s templating does not define'
expect_fail broken.json dashboard '^{$' '[' "not valid JSON"

echo "test-monitoring: OK in $(( ($(date +%s%N) - started) / 1000000 )) ms"
