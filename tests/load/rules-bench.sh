#!/usr/bin/env bash
# The rules benchmark: messages per second from MQTT publish to webhook 2xx on this machine.
#
#   tests/load/rules-bench.sh [--quick]
#
# Builds iotcore and iotcore-load (release), starts a private PostgreSQL (deploy/local/pg.sh;
# or uses IOTCORE_DATABASE_URL) and iotcore on free loopback ports, with private webhook
# destinations allowed (rules.allow_private_destinations) since the receiver is on
# loopback. Creates a tenant and devices with passwords through the API, then for each case
# creates a rule whose webhook is the receiver that iotcore-load runs itself, publishes
# JSON messages for a bounded time, waits (bounded) for the webhook to receive them, reads
# the rule's statistics and deletes the rule (and with it whatever is still queued).
#
# Cases: a rule sending one envelope per request and a batching rule
# (webhook.batch = BATCH_MAX_MESSAGES/BATCH_MAX_WAIT_MS, default 100/50), each with QoS 0 and
# QoS 1 publishers. PUBLISHERS (default 20), PAYLOAD (bytes, default 128), RATE (messages
# per second per publisher, default 0: as fast as the broker takes them), DURATION (measured
# seconds, default 10; --quick: 3) and WARMUP (default 2; --quick: 1) set the load. Prints a
# table and writes the report to tests/load/results/. IOTCORE_BIN runs another iotcore
# binary instead of building this checkout's.

# iotcore's topics start with a literal "$", written in single quotes on purpose.
# shellcheck disable=SC2016
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench-common.sh
source "$here/bench-common.sh"

parse_bench_args "" "$@"

publishers="${PUBLISHERS:-20}"
payload="${PAYLOAD:-128}"
rate="${RATE:-0}"
batch_max_messages="${BATCH_MAX_MESSAGES:-100}"
batch_max_wait_ms="${BATCH_MAX_WAIT_MS:-50}"
if ((quick)); then
  seconds="${DURATION:-3}" warmup="${WARMUP:-1}"
else
  seconds="${DURATION:-10}" warmup="${WARMUP:-2}"
fi

need_tools python3 curl
build_bench_binaries --iotcore-bin-from-env
make_workdir rules-bench

# --- PostgreSQL and iotcore -------------------------------------------------------------------
postgres_pid=""
if [[ -n ${IOTCORE_DATABASE_URL:-} ]]; then
  database_url="$IOTCORE_DATABASE_URL"
  say "using the database of IOTCORE_DATABASE_URL (its CPU is not measured)"
else
  start_pg
fi
iotcore_env
receiver_port="$(free_port)"
export IOTCORE_LOG_LEVEL="${IOTCORE_LOG_LEVEL:-warn}"
# The webhook receiver is on loopback, which only this setting lets rules reach (the dev
# profile sets it too; said here so that the benchmark does not depend on that).
export IOTCORE_RULES_ALLOW_PRIVATE_DESTINATIONS=true
# The per-client and per-tenant rate limits would measure themselves, not the rules path
# (the tenant's quotas are lifted by provision.py).
export IOTCORE_MQTT_MAX_PUBLISHES_PER_SECOND_PER_CLIENT=0 IOTCORE_MQTT_MAX_CONNECTS_PER_SECOND_PER_TENANT=0
export IOTCORE_MQTT_MAX_AUTH_IN_FLIGHT_PER_TENANT=0
start_iotcore

say "creating $publishers devices with passwords through the API"
provision "$publishers" "$work/ids"
token="$("$iotcore_bin" token --role admin --tenant "$tenant")"

api() {
  local method="$1" path="$2"
  shift 2
  curl -fsS -X "$method" "http://127.0.0.1:$api_port$path" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' "$@"
}

results="$work/results.jsonl"
: >"$results"

# $1: label, $2: QoS, $3: batch.max_messages, $4: batch.max_wait_ms
measure() {
  local label="$1" qos="$2" max_messages="$3" max_wait_ms="$4" rule report stats body
  say "--- $label"
  body="$(python3 -c 'import json,sys; print(json.dumps({
      "name": "bench", "topic_filter": "$devices/+/events/bench",
      "webhook": {"url": sys.argv[1], "max_in_flight": 64, "timeout_ms": 5000,
                  "batch": {"max_messages": int(sys.argv[2]), "max_wait_ms": int(sys.argv[3])}}}))' \
    "http://127.0.0.1:$receiver_port/hook" "$max_messages" "$max_wait_ms")"
  rule="$(api POST /v1/rules -d "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
  local -a pg=()
  [[ -n $postgres_pid ]] && pg=(--postgres-pid "$postgres_pid")
  if ! report="$("$load_bin" rules --broker "127.0.0.1:$mqtt_port" --broker-pid "$iotcore_pid" "${pg[@]}" \
    --receiver "127.0.0.1:$receiver_port" --ids "$work/ids" \
    --pub-client-id '{id}' --pub-username '{id}' --pub-password '{secret}' \
    --topic '$devices/{id}/events/bench' --clients "$publishers" --qos "$qos" \
    --payload "$payload" --rate "$rate" --duration "$seconds" --warmup "$warmup" --json)"; then
    report='{"error": "the load generator failed; see the output above"}'
  fi
  stats="$(api GET "/v1/rules/$rule/stats" || echo '{}')"
  api DELETE "/v1/rules/$rule" >/dev/null || say "could not delete rule $rule"
  python3 -c 'import json,sys
r = json.loads(sys.argv[1]); r["label"] = sys.argv[2]; r["rule_stats"] = json.loads(sys.argv[3] or "{}")
r["batch"] = {"max_messages": int(sys.argv[4]), "max_wait_ms": int(sys.argv[5])}
print(json.dumps(r))' "$report" "$label" "$stats" "$max_messages" "$max_wait_ms" >>"$results"
}

measure "single, QoS 0" 0 1 0
measure "single, QoS 1" 1 1 0
measure "batched, QoS 0" 0 "$batch_max_messages" "$batch_max_wait_ms"
measure "batched, QoS 1" 1 "$batch_max_messages" "$batch_max_wait_ms"

# --- Report ------------------------------------------------------------------------------------
out="$(report_file rules)"
{
  report_header "iotcore rules benchmark (MQTT publish → webhook 2xx)" "tests/load/rules-bench.sh$( ((quick)) && echo ' --quick')"
  printf 'iotcore: %s; %s publishers, payload %s B, rate %s/s each (0: unlimited), %s s measured after %s s warm-up\n\n' \
    "$(iotcore_version --iotcore-bin-from-env)" \
    "$publishers" "$payload" "$rate" "$seconds" "$warmup"
  python3 - "$results" <<'EOF'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
head = ("case", "published/s", "delivered/s", "backlog at stop", "undelivered",
        "queue left", "p50 ms", "p99 ms", "per request", "iotcore CPU", "PostgreSQL CPU")
print("| " + " | ".join(head) + " |")
print("| --- " + "| ---: " * (len(head) - 1) + "|")
for r in rows:
    if "error" in r:
        print(f"| {r['label']} | {r['error']} |")
        continue
    lat = r["latency_us"]
    per_request = r["envelopes"] / r["requests"] if r["requests"] else 0
    def cpu(window, total):
        if r.get(window) is None:
            return "—"
        per = r[total] * 1e6 / r["delivered"] if r["delivered"] else 0
        return f"{r[window]['cores']:.2f} cores, {per:,.0f} µs/msg"
    print(f"| {r['label']} | {r['published_per_s']:,.0f} | {r['delivered_per_s']:,.0f} | "
          f"{r['backlog_at_stop']:,} | {r['undelivered']:,} | "
          f"{r['rule_stats'].get('queue_depth', '?')} | {lat['p50'] / 1000:,.1f} | "
          f"{lat['p99'] / 1000:,.1f} | {per_request:.1f} | "
          f"{cpu('broker_cpu', 'broker_cpu_total_s')} | {cpu('postgres_cpu', 'postgres_cpu_total_s')} |")
print()
print("published/s and delivered/s: within the measured window; backlog at stop: published but")
print("not yet at the webhook when publishing stopped; undelivered: accepted by the broker but not")
print("received by the end of the wait that follows (at most 30 s, or 3 s without news); queue")
print("left: the rule's queue depth then; latency: publish to receipt, messages sent in the")
print("window; CPU: cores over the window, and CPU time from the first publish to the end of")
print("the wait per delivered message (iotcore runs broker, API and rules in one process).")
EOF
  printf '\nRaw reports (one JSON object per case):\n'
  cat "$results"
} | tee "$out"
say "written to $out"
