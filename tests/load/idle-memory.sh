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
# shellcheck source=bench-common.sh
source "$here/bench-common.sh"

counts=("$@")
((${#counts[@]})) || counts=(2000 19000)
for n in "${counts[@]}"; do
  [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 19000)) || die "N must be 1..19000 (one broker process may hold 20,000 descriptors here)"
done
settle="${SETTLE:-20}"

# The broker and the load generator may each use up to the hard limit of descriptors.
ulimit -n "$(ulimit -Hn)"

need_tools mosquitto python3 curl
build_bench_binaries
make_workdir idle

start_pg
iotcore_env
# Opening thousands of connections at once is what this measures, not the CONNECT rate limit.
export IOTCORE_MQTT_MAX_CONNECTS_PER_SECOND_PER_TENANT=0 IOTCORE_MQTT_MAX_AUTH_IN_FLIGHT_PER_TENANT=0

start_iotcore
provision 1 "$work/ids"
stop_iotcore

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
  measure mosquitto "$n" --broker "127.0.0.1:$mosquitto_port" --broker-pid "$mosquitto_pid" --client-id 'idle-{i}'
  stop_pid "$mosquitto_pid"
  mqtt_port="$(free_port)"
  export IOTCORE_MQTT_TCP_LISTEN="127.0.0.1:$mqtt_port"
  start_iotcore
  measure iotcore "$n" --broker "127.0.0.1:$mqtt_port" --broker-pid "$iotcore_pid" \
    --client-id "$registry:idle-{i}" --username "$registry" --password "$registry_password"
  stop_iotcore
done

quick=0 # the report's name has no -quick suffix
out="$(report_file idle-memory)"
{
  printf 'idle connections, %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'command: tests/load/idle-memory.sh %s (SETTLE=%s, IOTCORE_LOG_LEVEL=%s)\n' \
    "${counts[*]}" "$settle" "${IOTCORE_LOG_LEVEL:-default}"
  printf 'machine: %s, %s cores, %s; load average at the end: %s\n' "$(uname -sr)" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'iotcore %s (release), one registry credential; Mosquitto %s, anonymous\n\n' \
    "$(iotcore_version)" \
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
