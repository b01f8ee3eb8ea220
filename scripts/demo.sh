#!/usr/bin/env bash
# Three replicas of a service, each an app (examples/go/demo-app) plus its
# leadercron sidecar, on loopback against one local Consul dev agent
# (scripts/consul.sh builds it once). It shows who leads and which replica
# each trigger lands on, then sends SIGTERM to the leader so the drain and
# the handover can be watched, shows the new leader, and cleans up on exit.
#
#   ./scripts/demo.sh            (or: make demo)
#   DEMO_RUN_BEFORE=15 DEMO_RUN_AFTER=12 ./scripts/demo.sh
#   DEMO_KEEP_LOGS=1 ./scripts/demo.sh   keep the full logs
#
# Needs Go and curl. Takes about 45 s once Consul is built.
set -euo pipefail
cd "$(dirname "$0")/.."

before=${DEMO_RUN_BEFORE:-15}
after=${DEMO_RUN_AFTER:-12}
replicas=(a b c)

bold=$'\e[1m'; dim=$'\e[2m'; reset=$'\e[0m'
if [ ! -t 1 ]; then bold=; dim=; reset=; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$reset"; }

work=$(mktemp -d)
mkdir -p "$work/bin" "$work/logs"
declare -A app_pid sidecar_pid app_addr public_addr admin_addr
consul_pid=
# Children run in their own session, so that Ctrl-C reaches only this script,
# which then stops them in order (sidecars drain first). Where setsid is
# missing they get Ctrl-C too, and stop on their own.
detach=$(command -v setsid || true)

cleanup() {
  trap - EXIT INT TERM
  say "stopping everything"
  # Sidecars first (each drains its app), then the apps, then Consul.
  for r in "${replicas[@]}"; do
    p=${sidecar_pid[$r]:-}; [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
  done
  for r in "${replicas[@]}"; do
    p=${sidecar_pid[$r]:-}; [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  for r in "${replicas[@]}"; do
    p=${app_pid[$r]:-}; [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
  done
  for r in "${replicas[@]}"; do
    p=${app_pid[$r]:-}; [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  if [ -n "$consul_pid" ]; then
    kill -TERM "$consul_pid" 2>/dev/null || true
    wait "$consul_pid" 2>/dev/null || true
  fi
  if [ -n "${DEMO_KEEP_LOGS:-}" ]; then
    echo "logs kept in $work/logs"
  else
    rm -rf "$work"
  fi
  echo "done"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=lib/ports.sh
. scripts/lib/ports.sh  # the working directory is the repository root

# get KEY sets v to the value of KEY=value in $line (an hclog text line),
# without forking, so that lines from the replicas print in time order.
get() {
  local re="[[:space:]]$1=\"?([^\" ]*)"
  v=
  if [[ $line =~ $re ]]; then v=${BASH_REMATCH[1]}; fi
}

# show_sidecar NAME reads a sidecar's text log and prints one short line per
# event worth watching: leadership, each trigger, drain, exit.
show_sidecar() {
  local name=$1 line t v job slot
  while IFS= read -r line; do
    t=${line:11:12}
    case "$line" in
      *"leadership acquired"*)
        get fencing_token
        printf '%s  replica-%s  %sLEADER%s now (lock acquired, fencing token %s)\n' "$t" "$name" "$bold" "$reset" "$v" ;;
      *"leadership released"*)
        printf '%s  replica-%s  lock released\n' "$t" "$name" ;;
      *"leadership lost"* | *"lease ended"*)
        get cause
        printf '%s  replica-%s  leadership lost (%s)\n' "$t" "$name" "$v" ;;
      *" job="*" outcome=missed"*)
        get job; job=$v
        get slot; slot=$v; [ -n "$slot" ] || { get first; slot=$v; }
        get reason
        printf '%s  replica-%s  -> %-12s slot %s  missed (%s)\n' "$t" "$name" "$job" "${slot:11:8}" "$v" ;;
      *" job="*" outcome="*)
        get job; job=$v
        get slot; slot=$v
        get outcome; local outcome=$v
        get http_status; local status=$v
        get duration
        printf '%s  replica-%s  -> %-12s slot %s  %s %s (%s)\n' "$t" "$name" "$job" "${slot:11:8}" "$outcome" "$status" "$v" ;;
      *"] "*"stopping: waiting for triggers in flight"*)
        printf '%s  replica-%s  stopping: no new triggers; waits for the run in flight, then drains its app (POST /drain)\n' "$t" "$name" ;;
      *"app drained"*)
        get polls; local polls=$v
        get duration
        printf '%s  replica-%s  app drained (polls=%s, %s)\n' "$t" "$name" "$polls" "$v" ;;
      *"[ERROR]"*)
        printf '%s  replica-%s  %s\n' "$t" "$name" "${line#*\] }" ;;
    esac
  done
}

# json_field KEY JSON prints the first scalar value of "KEY" in JSON.
json_field() {
  printf '%s' "$2" | grep -Eo "\"$1\": *[a-z0-9.]+" | head -1 | sed -E 's/.*: *//'
}

status_line() {
  local r=$1 s leader token
  if ! s=$(curl -sf --max-time 2 "http://${admin_addr[$r]}/status"); then
    printf '  replica-%s  (sidecar not answering)\n' "$r"; return
  fi
  leader=$(json_field leader "$s")
  if [ "$leader" = true ]; then
    printf '  replica-%s  %sLEADER%s   fencing token %s, lease %s ms left   (sidecar %s, app %s)\n' "$r" "$bold" "$reset" \
      "$(json_field fencing_token "$s")" "$(json_field lease_remaining_ms "$s")" "${admin_addr[$r]}" "${app_addr[$r]}"
  else
    printf '  replica-%s  standby  (sidecar %s, app %s)\n' "$r" "${admin_addr[$r]}" "${app_addr[$r]}"
  fi
}

leader_now() {
  local r
  for r in "${replicas[@]}"; do
    curl -sf --max-time 2 "http://${admin_addr[$r]}/status" 2>/dev/null | grep -Eq '"leader": *true' && { echo "$r"; return; }
  done
  return 0
}

say "building the demo app and the sidecar"
go build -o "$work/bin/demo-app" ./examples/go/demo-app
go build -o "$work/bin/leadercron" .
consul_bin=$(scripts/consul.sh)

say "starting a Consul dev agent (in memory, loopback only)"
free_port http_port; free_port serf_port; free_port server_port
$detach "$consul_bin" agent -dev -node demo -bind 127.0.0.1 -client 127.0.0.1 \
  -http-port "$http_port" -dns-port -1 -grpc-port -1 -grpc-tls-port -1 \
  -serf-lan-port "$serf_port" -serf-wan-port -1 -server-port "$server_port" -log-level warn \
  -hcl 'ui_config { enabled = false }' >"$work/logs/consul.log" 2>&1 &
consul_pid=$!
export CONSUL_HTTP_ADDR=127.0.0.1:$http_port
for _ in $(seq 100); do
  curl -sf "http://$CONSUL_HTTP_ADDR/v1/status/leader" 2>/dev/null | grep -q ':' && break
  kill -0 "$consul_pid" 2>/dev/null || { cat "$work/logs/consul.log"; exit 1; }
  sleep 0.2
done
echo "consul at http://$CONSUL_HTTP_ADDR"

say "starting 3 replicas: app + sidecar each, one service \"demo\""
export LEADERCRON_SERVICE=demo
export LEADERCRON_LOG_FORMAT=text
export LEADERCRON_SESSION_TTL=10s LEADERCRON_LOCK_DELAY=5s LEADERCRON_DRAIN_INTERVAL=500ms
export LEADERCRON_JOB_HELLO="*/2 * * * * *"
export LEADERCRON_JOB_SEND_REPORT="*/5 * * * * * timeout=10s"
# One trigger secret for the fleet, from a file, read by every app and
# sidecar: triggers are signed, and the apps refuse unsigned ones.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/trigger-secret"
export LEADERCRON_TRIGGER_SECRET_FILE="$work/trigger-secret"
echo "jobs: hello every 2 s; send-report every 5 s (the app works 2 s on it); triggers signed"
for r in "${replicas[@]}"; do
  free_port p_app; free_port p_public; free_port p_admin
  app_addr[$r]=127.0.0.1:$p_app       # the app's private trigger port
  public_addr[$r]=127.0.0.1:$p_public # its public port
  admin_addr[$r]=127.0.0.1:$p_admin
  echo "replica-$r: app ${app_addr[$r]}, sidecar ${admin_addr[$r]}, LEADERCRON_ID=replica-$r"
done
echo "${dim}(one line per event: time, replica, what happened; full logs in $work/logs)${reset}"
for r in "${replicas[@]}"; do
  $detach "$work/bin/demo-app" -listen "${public_addr[$r]}" -trigger-listen "${app_addr[$r]}" >"$work/logs/app-$r.log" 2>&1 &
  app_pid[$r]=$!
  LEADERCRON_ID=replica-$r LEADERCRON_LISTEN=${admin_addr[$r]} LEADERCRON_APP_URL=http://${app_addr[$r]} \
    $detach "$work/bin/leadercron" > >(trap '' INT TERM; tee "$work/logs/sidecar-$r.log" | show_sidecar "$r") 2>&1 &
  sidecar_pid[$r]=$!
done

leader=
for _ in $(seq 100); do
  leader=$(leader_now); [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { echo "no leader after 20 s"; exit 1; }

say "who leads (GET /status on each sidecar)"
for r in "${replicas[@]}"; do status_line "$r"; done
echo

sleep "$before"
# Stop the leader just after a send-report slot, so that the drain has a
# job to wait for.
while [ $(( $(date +%s) % 5 )) -ne 0 ]; do sleep 0.2; done
sleep 0.5
leader=$(leader_now)
say "SIGTERM to the leader, replica-$leader: stop scheduling, finish the run in flight, drain, release"
kill -TERM "${sidecar_pid[$leader]}"
start=$(date +%s%N)
rc=0; wait "${sidecar_pid[$leader]}" || rc=$?
sidecar_pid[$leader]=
took=$(( ($(date +%s%N) - start) / 1000000 ))
sleep 0.2 # let its last log lines print first
printf '%s  replica-%s  sidecar exited with code %s after %s ms\n' "$(date -u +%T.%3N)" "$leader" "$rc" "$took"
sleep 0.5

say "who leads now"
for r in "${replicas[@]}"; do
  if [ "$r" = "$leader" ]; then printf '  replica-%s  stopped (its app still runs; a new sidecar would join as standby)\n' "$r"; else status_line "$r"; fi
done
echo

sleep "$after"
