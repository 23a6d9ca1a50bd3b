#!/usr/bin/env bash
# THE BENCHMARK: the same loads against Mosquitto and iotcore on this machine, in one run.
#
#   tests/load/side-by-side.sh [--quick]
#
# Builds iotcore and iotcore-load (release), installs Mosquitto from Debian's packages when
# missing (as root), starts a private PostgreSQL (deploy/local/pg.sh) and iotcore on free
# loopback ports with devices created through the API (passwords, ACLs and tenant namespaces
# as in production), and Mosquitto anonymous with its default configuration. Prints each
# figure for both brokers and the ratio iotcore / Mosquitto, and writes the report to
# tests/load/results/. --quick uses small counts and short runs, as a smoke check.
# IDLE_CONNECTIONS (default 5000) sets the idle connections per broker: up to 19,000 fit in
# one broker process here.
# LATENCY_ROUNDS (default 3; --quick: 1) sets the alternated rounds of the latency load; the
# report shows the median of each broker's rounds.
#
# Connect rates: Mosquitto checks a password file (PBKDF2-SHA512, cheap) on every CONNECT;
# iotcore checks argon2id (deliberately slow) on a credential's first CONNECT and answers
# later ones from its cache, so iotcore is measured both cold (freshly started, every device
# connecting for the first time) and warm (the same devices again). Over TLS both brokers
# require a client certificate: Mosquitto verifies it against a CA file (a CA made here with
# openssl, which also signs both brokers' server certificate); iotcore's is a certificate
# its API generated for the registry client, registered by fingerprint.

# iotcore's topics start with a literal "$", written in single quotes on purpose.
# shellcheck disable=SC2016
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR/../../deploy/local
# shellcheck source=../../deploy/local/common.sh
source "$here/../../deploy/local/common.sh"
cd "$IOTCORE_ROOT"

quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) die "usage: ${0##*/} [--quick]" ;;
esac

if ((quick)); then
  pairs=5 fan=20 seconds=2 warmup=0.5 latency_rate=50 idle=200 connect_n=50
  latency_rounds="${LATENCY_ROUNDS:-1}"
else
  pairs=100 fan=1000 seconds=10 warmup=2 latency_rate=100 idle="${IDLE_CONNECTIONS:-5000}" connect_n=1000
  latency_rounds="${LATENCY_ROUNDS:-3}"
fi
[[ "$latency_rounds" =~ ^[1-9][0-9]?$ ]] || die "LATENCY_ROUNDS must be a number from 1 to 99"

# Sockets: each broker and the load generator may use up to the hard limit (20,000 here).
ulimit -n "$(ulimit -Hn)"

command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || apt_install mosquitto
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
command -v python3 >/dev/null || apt_install python3
command -v curl >/dev/null || apt_install curl
command -v openssl >/dev/null || apt_install openssl

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$IOTCORE_ROOT/target}"
say "building iotcore and iotcore-load (release) into $CARGO_TARGET_DIR"
cargo build --release -q -p iotcore -p iotcore-load
iotcore_bin="$CARGO_TARGET_DIR/release/iotcore"
load_bin="$CARGO_TARGET_DIR/release/iotcore-load"

work="$(mktemp -d "${TMPDIR:-/tmp}/iotcore-bench.XXXXXX")"
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

forget_pid() {
  local keep=() pid
  for pid in "${pids[@]}"; do
    [[ $pid == "$1" ]] || keep+=("$pid")
  done
  pids=("${keep[@]}")
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget_pid "$1"
}

# --- TLS: a CA of this run, a server certificate for localhost, and a client certificate ---
mkdir -p "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj '/CN=iotcore benchmark CA' -keyout "$work/tls/ca.key" -out "$work/tls/ca.pem" 2>/dev/null
# Extensions make them X.509 v3 certificates, the only version rustls accepts.
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/tls/server.ext"
printf 'extendedKeyUsage=clientAuth\n' >"$work/tls/client.ext"
for name in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench-$name" \
    -keyout "$work/tls/$name.key" -out "$work/tls/$name.csr" 2>/dev/null
  openssl x509 -req -in "$work/tls/$name.csr" -CA "$work/tls/ca.pem" -CAkey "$work/tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/tls/$name.ext" -out "$work/tls/$name.pem" 2>/dev/null
done
chmod 755 "$work/tls"
chmod 644 "$work/tls"/* # read by mosquitto after it drops root

# --- iotcore, with its own PostgreSQL ------------------------------------------------------
database_url="$("$IOTCORE_ROOT/deploy/local/pg.sh" start "$work/pg" "$(free_port)")"
iotcore_api_port="$(free_port)"
iotcore_port="$(free_port)"
iotcore_tls_port="$(free_port)"
export IOTCORE_PROFILE=dev IOTCORE_DATABASE_URL="$database_url"
export IOTCORE_API_LISTEN="127.0.0.1:$iotcore_api_port" IOTCORE_MQTT_TCP_LISTEN="127.0.0.1:$iotcore_port"
export IOTCORE_MQTT_WS_LISTEN="" IOTCORE_MQTT_WSS_LISTEN="" IOTCORE_MQTT_TLS_LISTEN="127.0.0.1:$iotcore_tls_port"
export IOTCORE_MQTT_TLS_CERT_FILE="$work/tls/server.pem" IOTCORE_MQTT_TLS_KEY_FILE="$work/tls/server.key"
export IOTCORE_LOG_LEVEL="${IOTCORE_LOG_LEVEL:-warn}"
# Mosquitto has no rate limits by default; neither has iotcore here (the tenant's quotas are
# lifted by provision.py).
export IOTCORE_MQTT_MAX_PUBLISHES_PER_SECOND_PER_CLIENT=0 IOTCORE_MQTT_MAX_CONNECTS_PER_SECOND_PER_TENANT=0
export IOTCORE_MQTT_MAX_AUTH_IN_FLIGHT_PER_TENANT=0

iotcore_pid=""
start_iotcore() {
  "$iotcore_bin" serve >>"$work/iotcore.log" 2>&1 &
  iotcore_pid=$!
  pids+=("$iotcore_pid")
  local _
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$iotcore_api_port/readyz" >/dev/null 2>&1 && break
    kill -0 "$iotcore_pid" 2>/dev/null || die "iotcore exited; see $work/iotcore.log"
    sleep 0.1
  done
  wait_port "$iotcore_port"
  wait_port "$iotcore_tls_port"
}
start_iotcore

operator="$("$iotcore_bin" token --role operator)"
# Enough devices for fan-in and for the cold connect rate, each with its own password.
devices=$((fan > connect_n ? fan : connect_n))
say "creating $devices devices with passwords through the API"
provisioned="$(python3 "$here/provision.py" "http://127.0.0.1:$iotcore_api_port" "$operator" \
  "$iotcore_bin token --role admin --tenant" "$devices" "$work/ids" --registry-cert "$work/tls")"
registry="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["registry"])' <<<"$provisioned")"
registry_password="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["registry_password"])' <<<"$provisioned")"
device0="$(head -n1 "$work/ids" | cut -d' ' -f1)"

# --- Mosquitto -------------------------------------------------------------------------------
mosquitto_pid=""
mosquitto_port=""
# $1: extra configuration lines (empty: Mosquitto's defaults); $2: false to refuse
# anonymous clients.
start_mosquitto() {
  mosquitto_port="$(free_port)"
  {
    printf 'listener %s 127.0.0.1\nallow_anonymous %s\n' "$mosquitto_port" "${2:-true}"
    printf '%s\n' "${1:-}"
  } >"$work/mosquitto.conf"
  "$mosquitto_bin" -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
  mosquitto_pid=$!
  pids+=("$mosquitto_pid")
  wait_port "$mosquitto_port"
}

results="$work/results.jsonl"
: >"$results"

# $1: label, $2: broker (mosquitto|mosquitto-nodelay|iotcore), then iotcore-load arguments.
measure() {
  local label="$1" broker="$2" report
  shift 2
  say "--- $label: $broker"
  if ! report="$("$load_bin" "$@" --json)"; then
    report='{"error": "the load generator failed; see the output above"}'
  fi
  python3 -c 'import json,sys; r=json.loads(sys.argv[3]); r["label"]=sys.argv[1]; r["broker"]=sys.argv[2]; print(json.dumps(r))' \
    "$label" "$broker" "$report" >>"$results"
}

mosquitto_clients() {
  printf '%s\n' --broker "127.0.0.1:$mosquitto_port" --broker-pid "$mosquitto_pid" \
    --pub-client-id 'pub-{i}' --sub-client-id 'sub-{i}' --topic 'bench/{i}/events/x'
}
iotcore_clients() {
  printf '%s\n' --broker "127.0.0.1:$iotcore_port" --broker-pid "$iotcore_pid" --ids "$work/ids" \
    --pub-client-id '{id}' --pub-username '{id}' --pub-password='{secret}' \
    --topic '$devices/{id}/events/x' \
    --sub-client-id "$registry:s{i}" --sub-username "$registry" --sub-password="$registry_password"
}

# $1: label, then the load's arguments; the filters differ between the two topic spaces.
both() {
  local label="$1" pattern="$2" mosquitto_filter="$3" iotcore_filter="$4"
  shift 4
  local -a m i
  mapfile -t m < <(mosquitto_clients)
  mapfile -t i < <(iotcore_clients)
  measure "$label" mosquitto run --pattern "$pattern" --filter "$mosquitto_filter" "${m[@]}" "$@"
  measure "$label" iotcore run --pattern "$pattern" --filter "$iotcore_filter" "${i[@]}" "$@"
}

timing=(--duration "$seconds" --warmup "$warmup")
start_mosquitto ""
both "QoS 0 pairs" pairs 'bench/{i}/events/x' '$devices/{id}/events/x' \
  --clients "$pairs" --qos 0 --payload 64 "${timing[@]}"
both "QoS 1 pairs" pairs 'bench/{i}/events/x' '$devices/{id}/events/x' \
  --clients "$pairs" --qos 1 --payload 64 "${timing[@]}"
both "fan-in $fan → 1" fan-in 'bench/+/events/x' '$devices/+/events/x' \
  --clients "$fan" --qos 0 --payload 64 "${timing[@]}"
both "fan-out 1 → $fan" fan-out 'bench/0/events/x' "\$devices/$device0/events/x" \
  --clients "$fan" --qos 0 --payload 64 "${timing[@]}"
stop_pid "$mosquitto_pid"

# Latency at a fixed rate, in alternated rounds (Mosquitto default, iotcore, Mosquitto with
# set_tcp_nodelay), each Mosquitto freshly started: on a shared machine one run's p99 moves
# by several times from one minute to the next, so the report shows the median of the rounds.
latency() {
  local broker="$1"
  shift
  measure "latency" "$broker" run --pattern pairs "$@" \
    --clients "$pairs" --qos 0 --payload 64 --rate "$latency_rate" "${timing[@]}"
}
mapfile -t i < <(iotcore_clients)
for ((round = 1; round <= latency_rounds; round++)); do
  start_mosquitto ""
  mapfile -t m < <(mosquitto_clients)
  latency mosquitto --filter 'bench/{i}/events/x' "${m[@]}"
  stop_pid "$mosquitto_pid"
  latency iotcore --filter '$devices/{id}/events/x' "${i[@]}"
  start_mosquitto "set_tcp_nodelay true"
  mapfile -t m < <(mosquitto_clients)
  latency mosquitto-nodelay --filter 'bench/{i}/events/x' "${m[@]}"
  stop_pid "$mosquitto_pid"
done

# Idle connections on freshly started brokers, so that memory freed by the loads above is
# not reused and counted as free. Both hold a keep alive longer than the measurement.
idle_common=(--connections "$idle" --per-process 9500 --sources 8 --keep-alive 900 --connect-concurrency 64 --settle 3)
start_mosquitto ""
measure "idle" mosquitto idle --broker "127.0.0.1:$mosquitto_port" --broker-pid "$mosquitto_pid" \
  --client-id 'idle-{i}' "${idle_common[@]}"
stop_pid "$mosquitto_pid"
stop_pid "$iotcore_pid"
start_iotcore
measure "idle" iotcore idle --broker "127.0.0.1:$iotcore_port" --broker-pid "$iotcore_pid" \
  --client-id "$registry:idle-{i}" --username "$registry" --password="$registry_password" "${idle_common[@]}"

# Connect rate with a password on every connection: Mosquitto with a password file (its
# default PBKDF2-SHA512 hashes) against iotcore's argon2id, each device with its own
# password. iotcore is restarted first so that no device's password is in its cache (cold:
# one argon2id verification per CONNECT), then the same devices connect again (warm).
mosquitto_passwd_bin="$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)"
"$mosquitto_passwd_bin" -c -b "$work/passwd" bench "bench-password-123" >/dev/null
chmod 644 "$work/passwd" # read by mosquitto after it drops root
start_mosquitto "password_file $work/passwd" false
rate_common=(--connections "$connect_n" --per-process 9500 --sources 2 --keep-alive 900 --connect-concurrency 64 --settle 0)
measure "connect rate" mosquitto idle --broker "127.0.0.1:$mosquitto_port" \
  --client-id 'rate-{i}' --username bench --password=bench-password-123 "${rate_common[@]}"
stop_pid "$mosquitto_pid"
stop_pid "$iotcore_pid"
start_iotcore
for phase in cold warm; do
  measure "connect rate $phase" iotcore idle --broker "127.0.0.1:$iotcore_port" --ids "$work/ids" \
    --client-id '{id}' --username '{id}' --password='{secret}' "${rate_common[@]}"
done

# Connect rate over TLS with a client certificate and no password.
start_mosquitto "cafile $work/tls/ca.pem
certfile $work/tls/server.pem
keyfile $work/tls/server.key
require_certificate true"
measure "connect rate TLS" mosquitto idle --broker "127.0.0.1:$mosquitto_port" \
  --tls-ca "$work/tls/ca.pem" --tls-server-name localhost \
  --tls-cert "$work/tls/client.pem" --tls-key "$work/tls/client.key" \
  --client-id 'tls-{i}' "${rate_common[@]}"
stop_pid "$mosquitto_pid"
measure "connect rate TLS" iotcore idle --broker "127.0.0.1:$iotcore_tls_port" \
  --tls-ca "$work/tls/ca.pem" --tls-server-name localhost \
  --tls-cert "$work/tls/registry.pem" --tls-key "$work/tls/registry.key" \
  --client-id "$registry:tls-{i}" "${rate_common[@]}"
stop_pid "$iotcore_pid"

# --- Report ------------------------------------------------------------------------------------
mkdir -p "$here/results"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
suffix=""
((quick)) && suffix="-quick"
out="$here/results/side-by-side-$stamp$suffix.txt"
{
  printf 'iotcore side by side with Mosquitto, %s%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$( ((quick)) && echo ' (--quick)')"
  printf 'command: tests/load/side-by-side.sh%s\n' "$( ((quick)) && echo ' --quick')"
  printf 'machine: %s, %s cores, %s; %s\n' "$(uname -sr)" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" \
    "$(free -g | awk '/^Mem:/ {print $2 " GiB RAM"}')"
  printf 'load average before the report: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'mosquitto: %s; iotcore: %s\n' "$("$mosquitto_bin" -h 2>/dev/null | head -n1 || true)" "$(git -C "$IOTCORE_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  printf '\n'
  python3 "$here/report.py" "$results" "$pairs" "$fan" "$latency_rate" "$idle" "$connect_n"
  printf '\nRaw reports (one JSON object per run):\n'
  cat "$results"
} | tee "$out"
say "written to $out"
