#!/usr/bin/env bash
# THE BENCHMARK: the same loads against Mosquitto and iotcore on this machine, in one run.
#
#   tests/load/side-by-side.sh [--quick] [--only LOAD[,LOAD..]]
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
# --only (or LOADS, the same list) runs only the loads named: qos0, qos1, fan-in, fan-out,
# latency, idle, connect (TCP + password), tls (TLS + client certificate); the report shows
# the figures of those.
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
# shellcheck source=bench-common.sh
source "$here/bench-common.sh"

all_loads=qos0,qos1,fan-in,fan-out,latency,idle,connect,tls
parse_bench_args "$all_loads" ${LOADS:+--only "$LOADS"} "$@"

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

need_tools mosquitto python3 curl openssl
build_bench_binaries
make_workdir bench

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
start_pg
iotcore_env --tls "$work/tls/server.pem" "$work/tls/server.key"
export IOTCORE_LOG_LEVEL="${IOTCORE_LOG_LEVEL:-warn}"
# Mosquitto has no rate limits by default; neither has iotcore here (the tenant's quotas are
# lifted by provision.py).
export IOTCORE_MQTT_MAX_PUBLISHES_PER_SECOND_PER_CLIENT=0 IOTCORE_MQTT_MAX_CONNECTS_PER_SECOND_PER_TENANT=0
export IOTCORE_MQTT_MAX_AUTH_IN_FLIGHT_PER_TENANT=0
start_iotcore

# Enough devices for the loads asked for (pairs, fan-in, the cold connect rate), each with
# its own password.
devices=1
{ runs qos0 || runs qos1 || runs latency; } && ((pairs > devices)) && devices=$pairs
runs fan-in && ((fan > devices)) && devices=$fan
runs connect && ((connect_n > devices)) && devices=$connect_n
say "creating $devices devices with passwords through the API"
provision "$devices" "$work/ids" --registry-cert "$work/tls"
device0="$(head -n1 "$work/ids" | cut -d' ' -f1)"

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
  printf '%s\n' --broker "127.0.0.1:$mqtt_port" --broker-pid "$iotcore_pid" --ids "$work/ids" \
    --pub-client-id '{id}' --pub-username '{id}' --pub-password='{secret}' \
    --topic '$devices/{id}/events/x' \
    --sub-client-id "$registry:s{i}" --sub-username "$registry" --sub-password="$registry_password"
}

# $1: load (for --only), $2: label, then the load's arguments; the filters differ between
# the two topic spaces.
both() {
  local load="$1" label="$2" pattern="$3" mosquitto_filter="$4" iotcore_filter="$5"
  shift 5
  runs "$load" || return 0
  local -a m i
  mapfile -t m < <(mosquitto_clients)
  mapfile -t i < <(iotcore_clients)
  measure "$label" mosquitto run --pattern "$pattern" --filter "$mosquitto_filter" "${m[@]}" "$@"
  measure "$label" iotcore run --pattern "$pattern" --filter "$iotcore_filter" "${i[@]}" "$@"
}

timing=(--duration "$seconds" --warmup "$warmup")
if runs qos0 || runs qos1 || runs fan-in || runs fan-out; then
  start_mosquitto ""
  both qos0 "QoS 0 pairs" pairs 'bench/{i}/events/x' '$devices/{id}/events/x' \
    --clients "$pairs" --qos 0 --payload 64 "${timing[@]}"
  both qos1 "QoS 1 pairs" pairs 'bench/{i}/events/x' '$devices/{id}/events/x' \
    --clients "$pairs" --qos 1 --payload 64 "${timing[@]}"
  both fan-in "fan-in $fan → 1" fan-in 'bench/+/events/x' '$devices/+/events/x' \
    --clients "$fan" --qos 0 --payload 64 "${timing[@]}"
  both fan-out "fan-out 1 → $fan" fan-out 'bench/0/events/x' "\$devices/$device0/events/x" \
    --clients "$fan" --qos 0 --payload 64 "${timing[@]}"
  stop_pid "$mosquitto_pid"
fi

# Latency at a fixed rate, in alternated rounds (Mosquitto default, iotcore, Mosquitto with
# set_tcp_nodelay), each Mosquitto freshly started: on a shared machine one run's p99 moves
# by several times from one minute to the next, so the report shows the median of the rounds.
latency() {
  local broker="$1"
  shift
  measure "latency" "$broker" run --pattern pairs "$@" \
    --clients "$pairs" --qos 0 --payload 64 --rate "$latency_rate" "${timing[@]}"
}
if runs latency; then
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
fi

# Idle connections on freshly started brokers, so that memory freed by the loads above is
# not reused and counted as free. Both hold a keep alive longer than the measurement.
if runs idle; then
  idle_common=(--connections "$idle" --per-process 9500 --sources 8 --keep-alive 900 --connect-concurrency 64 --settle 3)
  start_mosquitto ""
  measure "idle" mosquitto idle --broker "127.0.0.1:$mosquitto_port" --broker-pid "$mosquitto_pid" \
    --client-id 'idle-{i}' "${idle_common[@]}"
  stop_pid "$mosquitto_pid"
  stop_iotcore
  start_iotcore
  measure "idle" iotcore idle --broker "127.0.0.1:$mqtt_port" --broker-pid "$iotcore_pid" \
    --client-id "$registry:idle-{i}" --username "$registry" --password="$registry_password" "${idle_common[@]}"
fi

rate_common=(--connections "$connect_n" --per-process 9500 --sources 2 --keep-alive 900 --connect-concurrency 64 --settle 0)
# Connect rate with a password on every connection: Mosquitto with a password file (its
# default PBKDF2-SHA512 hashes) against iotcore's argon2id, each device with its own
# password. iotcore is restarted first so that no device's password is in its cache (cold:
# one argon2id verification per CONNECT), then the same devices connect again (warm).
if runs connect; then
  mosquitto_passwd_bin="$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)"
  "$mosquitto_passwd_bin" -c -b "$work/passwd" bench "bench-password-123" >/dev/null
  chmod 644 "$work/passwd" # read by mosquitto after it drops root
  start_mosquitto "password_file $work/passwd" false
  measure "connect rate" mosquitto idle --broker "127.0.0.1:$mosquitto_port" \
    --client-id 'rate-{i}' --username bench --password=bench-password-123 "${rate_common[@]}"
  stop_pid "$mosquitto_pid"
  stop_iotcore
  start_iotcore
  for phase in cold warm; do
    measure "connect rate $phase" iotcore idle --broker "127.0.0.1:$mqtt_port" --ids "$work/ids" \
      --client-id '{id}' --username '{id}' --password='{secret}' "${rate_common[@]}"
  done
fi

# Connect rate over TLS with a client certificate and no password.
if runs tls; then
  start_mosquitto "cafile $work/tls/ca.pem
certfile $work/tls/server.pem
keyfile $work/tls/server.key
require_certificate true"
  measure "connect rate TLS" mosquitto idle --broker "127.0.0.1:$mosquitto_port" \
    --tls-ca "$work/tls/ca.pem" --tls-server-name localhost \
    --tls-cert "$work/tls/client.pem" --tls-key "$work/tls/client.key" \
    --client-id 'tls-{i}' "${rate_common[@]}"
  stop_pid "$mosquitto_pid"
  measure "connect rate TLS" iotcore idle --broker "127.0.0.1:$tls_port" \
    --tls-ca "$work/tls/ca.pem" --tls-server-name localhost \
    --tls-cert "$work/tls/registry.pem" --tls-key "$work/tls/registry.key" \
    --client-id "$registry:tls-{i}" "${rate_common[@]}"
fi
stop_iotcore

# --- Report ------------------------------------------------------------------------------------
out="$(report_file side-by-side)"
# Not `$( ((quick)) && ...)`: without --quick that substitution fails, and so would the script.
options="${only:+ --only $only}"
if ((quick)); then options=" --quick$options"; fi
{
  report_header "iotcore side by side with Mosquitto" "tests/load/side-by-side.sh$options"
  printf 'mosquitto: %s; iotcore: %s\n' "$("$mosquitto_bin" -h 2>/dev/null | head -n1 || true)" "$(iotcore_version)"
  printf '\n'
  python3 "$here/report.py" "$results" "$pairs" "$fan" "$latency_rate" "$idle" "$connect_n"
  printf '\nRaw reports (one JSON object per run):\n'
  cat "$results"
} | tee "$out"
say "written to $out"
