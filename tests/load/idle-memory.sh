#!/usr/bin/env bash
# Memory and CPU of idle connections: iotcore and Mosquitto, each freshly started, holding
# N idle MQTT connections, for each N given.
#
#   tests/load/idle-memory.sh [N ...]        (default: 2000 19000)
#
# iotcore (release build, its own PostgreSQL from deploy/local/pg.sh) is connected to with
# one registry credential and client ids `{registry}:idle-{i}`: its password is verified
# (argon2id) once and then answered from the cache of verified credentials, so that opening
# 19,000 connections takes seconds, not the hour that 19,000 first device CONNECTs would.
# Mosquitto runs anonymous with its default configuration. Each run opens the connections
# over several processes and 127.0.0.x source addresses (`iotcore-load idle`), waits
# SETTLE seconds (default 20) with every connection idle, and reads the broker's resident
# memory and the CPU it used meanwhile. IOTCORE_LOG_LEVEL (default: the binary's own,
# info) is passed on: at info, every connection carries its tracing span.
# Writes the report to tests/load/results/idle-memory-<time>.txt.

# shellcheck disable=SC2016
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR/../../deploy/local
# shellcheck source=../../deploy/local/common.sh
source "$here/../../deploy/local/common.sh"
cd "$IOTCORE_ROOT"

counts=("$@")
((${#counts[@]})) || counts=(2000 19000)
for n in "${counts[@]}"; do
  [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 19000)) || die "N must be 1..19000 (one broker process may hold 20,000 descriptors here)"
done
settle="${SETTLE:-20}"

# The broker and the load generator may each use up to the hard limit of descriptors.
ulimit -n "$(ulimit -Hn)"

command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || apt_install mosquitto
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$IOTCORE_ROOT/target}"
say "building iotcore and iotcore-load (release) into $CARGO_TARGET_DIR"
cargo build --release -q -p iotcore -p iotcore-load
iotcore_bin="$CARGO_TARGET_DIR/release/iotcore"
load_bin="$CARGO_TARGET_DIR/release/iotcore-load"

work="$(mktemp -d "${TMPDIR:-/tmp}/iotcore-idle.XXXXXX")"
chmod 755 "$work"
pids=()
cleanup() {
  local status=$? pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  "$IOTCORE_ROOT/deploy/local/pg.sh" stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_pid() {
  local keep=() pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for pid in "${pids[@]}"; do
    [[ $pid == "$1" ]] || keep+=("$pid")
  done
  pids=("${keep[@]}")
}

database_url="$("$IOTCORE_ROOT/deploy/local/pg.sh" start "$work/pg" "$(free_port)")"
api_port="$(free_port)"
mqtt_port="$(free_port)"
export IOTCORE_PROFILE=dev IOTCORE_DATABASE_URL="$database_url"
export IOTCORE_API_LISTEN="127.0.0.1:$api_port" IOTCORE_MQTT_TCP_LISTEN="127.0.0.1:$mqtt_port"
export IOTCORE_MQTT_WS_LISTEN="" IOTCORE_MQTT_WSS_LISTEN="" IOTCORE_MQTT_TLS_LISTEN=""
# Opening thousands of connections at once is what this measures, not the CONNECT rate limit.
export IOTCORE_MQTT_MAX_CONNECTS_PER_SECOND_PER_TENANT=0 IOTCORE_MQTT_MAX_AUTH_IN_FLIGHT_PER_TENANT=0

iotcore_pid=""
start_iotcore() {
  "$iotcore_bin" serve >>"$work/iotcore.log" 2>&1 &
  iotcore_pid=$!
  pids+=("$iotcore_pid")
  local _
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$api_port/readyz" >/dev/null 2>&1 && break
    kill -0 "$iotcore_pid" 2>/dev/null || die "iotcore exited; see $work/iotcore.log"
    sleep 0.1
  done
  wait_port "$mqtt_port"
}
start_iotcore
operator="$("$iotcore_bin" token --role operator)"
provisioned="$(python3 "$here/provision.py" "http://127.0.0.1:$api_port" "$operator" \
  "$iotcore_bin token --role admin --tenant" 1 "$work/ids")"
registry="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["registry"])' <<<"$provisioned")"
registry_password="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["registry_password"])' <<<"$provisioned")"
stop_pid "$iotcore_pid"

mosquitto_pid=""
start_mosquitto() {
  mqtt_port="$(free_port)"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$mqtt_port" >"$work/mosquitto.conf"
  "$mosquitto_bin" -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
  mosquitto_pid=$!
  pids+=("$mosquitto_pid")
  wait_port "$mqtt_port"
}

results="$work/results.jsonl"
: >"$results"
# $1: broker, $2: connections, then iotcore-load arguments.
measure() {
  local broker="$1" n="$2" report
  shift 2
  say "--- $broker, $n idle connections"
  if ! report="$("$load_bin" idle --connections "$n" --per-process 9500 --sources 8 --keep-alive 900 \
    --connect-concurrency 64 --settle "$settle" "$@" --json)"; then
    report='{"error": "the load generator failed; see the output above"}'
  fi
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r["broker"]=sys.argv[1]; print(json.dumps(r))' \
    "$broker" "$report" >>"$results"
}

for n in "${counts[@]}"; do
  start_mosquitto
  measure mosquitto "$n" --broker "127.0.0.1:$mqtt_port" --broker-pid "$mosquitto_pid" --client-id 'idle-{i}'
  stop_pid "$mosquitto_pid"
  mqtt_port="$(free_port)"
  export IOTCORE_MQTT_TCP_LISTEN="127.0.0.1:$mqtt_port"
  start_iotcore
  measure iotcore "$n" --broker "127.0.0.1:$mqtt_port" --broker-pid "$iotcore_pid" \
    --client-id "$registry:idle-{i}" --username "$registry" --password "$registry_password"
  stop_pid "$iotcore_pid"
done

mkdir -p "$here/results"
out="$here/results/idle-memory-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  printf 'idle connections, %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'command: tests/load/idle-memory.sh %s (SETTLE=%s, IOTCORE_LOG_LEVEL=%s)\n' \
    "${counts[*]}" "$settle" "${IOTCORE_LOG_LEVEL:-default}"
  printf 'machine: %s, %s cores, %s; load average at the end: %s\n' "$(uname -sr)" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'iotcore %s (release), one registry credential; Mosquitto %s, anonymous\n\n' \
    "$(git -C "$IOTCORE_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$("$mosquitto_bin" -h 2>/dev/null | head -n1 | awk '{print $3}' || true)"
  python3 - "$results" <<'EOF'
import json, sys
print(f"{'broker':<10} {'connections':>11} {'held':>6} {'RSS before KiB':>14} {'RSS after KiB':>13} {'bytes/conn':>10} {'idle CPU, cores':>15} {'connects/s':>10}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "error" in r:
        print(f"{r['broker']:<10} {r['error']}")
        continue
    cpu = r.get("broker_idle_cpu") or {}
    per = r.get("broker_bytes_per_connection")
    print(f"{r['broker']:<10} {r['connections']:>11,} {r['connected']:>6,} {r.get('broker_rss_before_kib') or 0:>14,} "
          f"{r.get('broker_rss_after_kib') or 0:>13,} {per or 0:>10,.0f} {cpu.get('cores', 0):>15.4f} {r['connects_per_s']:>10,.0f}")
EOF
} | tee "$out"
say "written to $out"
