#!/usr/bin/env bash
# The reconnect-storm benchmark: what it costs iotcore when every device connects at once,
# first for the first time (cold) and then again after all of them dropped (warm).
#
#   tests/load/storm-bench.sh [--quick]
#
# Builds iotcore and iotcore-load (release), starts a private PostgreSQL (deploy/local/pg.sh)
# with pg_stat_statements loaded, and iotcore on free loopback ports with a TLS listener
# (a server certificate from a CA made here with openssl). Creates through the API a tenant,
# PASSWORD_DEVICES devices with a password each (default 10,000) and, in a second registry
# with a CA created by the service, CERT_DEVICES devices with a certificate the service
# generates (default 2,000). Then, for passwords over TCP and for client certificates over
# TLS, on a freshly started iotcore: `iotcore-load storm` connects every device at once
# (cold: an argon2id verification per password, a certificate lookup per certificate),
# drops every connection at once as restarting clients do, and reconnects them all at once
# (warm), STORMS times (default 2). Each phase reports connections, connect rate, connect
# latency, failures, iotcore's CPU seconds (/proc/PID/stat) and the statements iotcore's
# database executed (pg_stat_statements), with the statements that ran most. --quick uses
# 300 and 100 devices. Prints a table and writes it to tests/load/results/storm-*.txt.
# IOTCORE_BIN runs another iotcore binary instead of building this checkout's.
# STORM_TIME_LIMIT (seconds; default 900 plus 0.1 s per device) bounds the run after the
# build: past it the script ends what runs, cleans up and fails saying so.

set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench-common.sh
source "$here/bench-common.sh"

parse_bench_args "" "$@"

if ((quick)); then
  password_devices="${PASSWORD_DEVICES:-300}" cert_devices="${CERT_DEVICES:-100}"
else
  password_devices="${PASSWORD_DEVICES:-10000}" cert_devices="${CERT_DEVICES:-2000}"
fi
storms="${STORMS:-2}"
[[ $password_devices =~ ^[0-9]+$ && $cert_devices =~ ^[0-9]+$ && $storms =~ ^[0-9]+$ ]] ||
  die "PASSWORD_DEVICES, CERT_DEVICES and STORMS must be numbers"
time_limit_s="${STORM_TIME_LIMIT:-$((900 + (password_devices + cert_devices) / 10))}"
[[ $time_limit_s =~ ^[1-9][0-9]*$ ]] || die "STORM_TIME_LIMIT must be a number of seconds"

# Sockets: iotcore and each load process may use up to the hard limit (20,000 here).
ulimit -n "$(ulimit -Hn)"

need_tools python3 curl openssl
build_bench_binaries --iotcore-bin-from-env
make_workdir storm
time_limit "$time_limit_s" STORM_TIME_LIMIT

# --- PostgreSQL with pg_stat_statements ---------------------------------------------------------
start_pg
pg_bindir="$(find_pg_bindir)"
psql=(psql)
[[ -x $pg_bindir/psql ]] && psql=("$pg_bindir/psql")
psql+=(-h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
"${psql[@]}" -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
"$IOTCORE_ROOT/deploy/local/pg.sh" stop "$work/pg" >/dev/null
"$IOTCORE_ROOT/deploy/local/pg.sh" start "$work/pg" "$pg_port" >/dev/null
"${psql[@]}" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null

# The probe iotcore-load runs at each phase boundary: the statements executed so far in
# iotcore's database (the probe itself runs in database "postgres"), and a snapshot per
# statement for the breakdown below.
mkdir -p "$work/statements"
cat >"$work/probe.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
label="\$(printf '%s' "\${1:-x}" | tr -c 'a-zA-Z0-9_-' '_')"
$(printf '%q ' "${psql[@]}") -F \$'\\t' -c "SELECT queryid, calls, regexp_replace(left(query, 160), '\\s+', ' ', 'g')
  FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'iotcore')" \\
  >"$work/statements/\$kind.\$label.tsv"
awk -F '\\t' '{ n += \$2 } END { print n + 0 }' "$work/statements/\$kind.\$label.tsv"
EOF
chmod 755 "$work/probe.sh"

# --- TLS: a CA of this run and a server certificate for localhost -----------------------------
mkdir -p "$work/tls" "$work/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj '/CN=iotcore storm benchmark CA' -keyout "$work/tls/ca.key" -out "$work/tls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=localhost' \
  -keyout "$work/tls/server.key" -out "$work/tls/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/tls/server.ext"
openssl x509 -req -in "$work/tls/server.csr" -CA "$work/tls/ca.pem" -CAkey "$work/tls/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/tls/server.ext" -out "$work/tls/server.pem" 2>/dev/null

# --- iotcore ---------------------------------------------------------------------------------
iotcore_env --tls "$work/tls/server.pem" "$work/tls/server.key"
export IOTCORE_LOG_LEVEL="${IOTCORE_LOG_LEVEL:-warn}"
# A storm is what the per-tenant CONNECT rate and authentications in flight are there to
# slow down; lifted here so that the benchmark measures the authentication itself (the
# tenant's quotas are lifted by provision.py).
export IOTCORE_MQTT_MAX_CONNECTS_PER_SECOND_PER_TENANT=0 IOTCORE_MQTT_MAX_AUTH_IN_FLIGHT_PER_TENANT=0

start_iotcore

say "creating $password_devices devices with passwords and $cert_devices with certificates through the API"
provision_started=$SECONDS
provision "$password_devices" "$work/ids" --cert-devices "$cert_devices" "$work/certs" --workers 6
provision_s=$((SECONDS - provision_started))
say "provisioned in $provision_s s"

results="$work/results.jsonl"
: >"$results"

# $1: kind, then iotcore-load storm arguments. Each kind starts on a freshly started iotcore
# whose caches are empty.
measure() {
  local kind="$1" report
  shift
  stop_iotcore
  start_iotcore
  say "--- $kind: $iotcore_bin (pid $iotcore_pid)"
  if ! report="$(kind="$kind" "$load_bin" storm --broker-pid "$iotcore_pid" --storms "$storms" \
    --probe "$work/probe.sh \"\$1\"" --keep-alive 900 --connect-timeout-secs 300 \
    --per-process 2500 --sources 8 --connect-concurrency 500 --settle 3 --pause 3 "$@" --json)"; then
    report='{"error": "the load generator failed; see the output above"}'
  fi
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r["kind"]=sys.argv[1]; print(json.dumps(r))' \
    "$kind" "$report" >>"$results"
}

measure passwords --broker "127.0.0.1:$mqtt_port" --connections "$password_devices" --ids "$work/ids" \
  --client-id '{id}' --username '{id}' --password '{secret}'
measure certificates --broker "127.0.0.1:$tls_port" --connections "$cert_devices" --ids "$work/certs/ids" \
  --tls-ca "$work/tls/ca.pem" --tls-server-name localhost \
  --tls-cert "$work/certs/{id}.pem" --tls-key "$work/certs/{id}.key" --client-id '{id}'
stop_iotcore

# --- Report ------------------------------------------------------------------------------------
out="$(report_file storm)"
{
  report_header "iotcore reconnect storms" "tests/load/storm-bench.sh$( ((quick)) && echo ' --quick')"
  printf 'iotcore: %s; %s devices with passwords (TCP), %s with certificates (TLS), provisioned through the API in %s s\n\n' \
    "$(iotcore_version --iotcore-bin-from-env)" \
    "$password_devices" "$cert_devices" "$provision_s"
  python3 - "$results" "$work/statements" <<'EOF'
import json, os, sys

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
snapshots = sys.argv[2]

def label(name):
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)

def snapshot(kind, name):
    stats = {}
    path = os.path.join(snapshots, f"{kind}.{label(name)}.tsv")
    if not os.path.exists(path):
        return stats
    for line in open(path, encoding="utf-8"):
        parts = line.rstrip("\n").split("\t", 2)
        if len(parts) == 3 and parts[1].isdigit():
            stats[parts[0]] = (int(parts[1]), parts[2])
    return stats

head = ("kind", "phase", "connected", "failed", "connects/s", "p50 ms", "p99 ms",
        "statements", "per connection", "iotcore CPU s", "CPU ms per connection")
print("| " + " | ".join(head) + " |")
print("| --- | --- " + "| ---: " * (len(head) - 2) + "|")
breakdown = []
for r in rows:
    if "error" in r:
        print(f"| {r['kind']} | {r['error']} |")
        continue
    quiet = r["background"]
    rate = lambda v: v / quiet["wall_s"] if quiet["wall_s"] else 0
    print(f"| {r['kind']} | background ({quiet['wall_s']:.0f} s, nothing connected) | | | | | | "
          f"{quiet['probe_delta']} | | {quiet['broker_cpu_s']:.2f} | |")
    previous = "background"
    for p in r["phases"]:
        n = p["connected"] or p["closed"]
        per = lambda v: f"{v / n:.2f}" if n and v is not None else "—"
        per_ms = lambda v: f"{v * 1000 / n:.2f}" if n and v is not None else "—"
        cpu = p["broker_cpu_s"]
        if p["connect_latency_us"]["count"]:
            lat = p["connect_latency_us"]
            print(f"| {r['kind']} | {p['name']} | {p['connected']:,} | {p['failed']:,} | "
                  f"{p['connects_per_s']:,.0f} | {lat['p50'] / 1000:,.1f} | {lat['p99'] / 1000:,.1f} | "
                  f"{p['probe_delta']:,} | {per(p['probe_delta'])} | {cpu:.2f} | {per_ms(cpu)} |")
        else:
            print(f"| {r['kind']} | {p['name']} ({p['closed']:,} closed) | | {p['failed']:,} | | | | "
                  f"{p['probe_delta']:,} | {per(p['probe_delta'])} | {cpu:.2f} | {per_ms(cpu)} |")
        if p.get("first_error"):
            breakdown.append(f"{r['kind']}, {p['name']}: first error: {p['first_error']}")
        before, after = snapshot(r["kind"], previous), snapshot(r["kind"], p["name"])
        deltas = sorted(((calls - before.get(qid, (0, ""))[0], text) for qid, (calls, text) in after.items()),
                        reverse=True)
        top = [f"    {d:>7,}  {text}" for d, text in deltas[:6] if d > 0]
        if top:
            breakdown.append(f"{r['kind']}, {p['name']}: statements that ran most")
            breakdown.extend(top)
        previous = p["name"]
print()
print("connected/failed: connections opened or refused; connects/s: connections over the time from")
print("the first attempt to the last CONNACK (all at once, up to 500 handshakes in flight per load")
print("process); latency: TCP (and TLS) connect to CONNACK; statements: executed in iotcore's")
print("database from the end of the previous phase to 3 s after the last CONNACK")
print("(pg_stat_statements); iotcore CPU: user + system seconds over the same window; drop: every")
print("client closes its socket without DISCONNECT, then a 3 s pause.")
print()
for line in breakdown:
    print(line)
EOF
  printf '\nRaw reports (one JSON object per kind):\n'
  cat "$results"
} | tee "$out"
say "written to $out"
