#!/usr/bin/env bash
# Fuzzes the control plane with schemathesis: starts the built iotcore (api only) against a
# fresh database on DATABASE_URL's server, on a free port, and runs `schemathesis run`
# against its /openapi.json as an operator acting in a tenant, checking that no response is
# a 5xx and that every response matches the document. Bounded in examples and in time.
#
#   DATABASE_URL=postgres://… IOTCORE_BIN=…/iotcore ./deploy/local/schemathesis.sh
#
# Extra arguments go to `schemathesis run` (e.g. `--phases fuzzing --mode positive`).
#
# Installs schemathesis (deploy/local/schemathesis-requirements.txt) into a virtualenv under
# CARGO_TARGET_DIR on first use.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${DATABASE_URL:?DATABASE_URL names the PostgreSQL server}"
: "${IOTCORE_BIN:?IOTCORE_BIN names the built iotcore binary}"
target="${CARGO_TARGET_DIR:-$IOTCORE_ROOT/target}"
venv="$target/schemathesis-venv"
requirements="$IOTCORE_ROOT/deploy/local/schemathesis-requirements.txt"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-25}"
time_limit="${SCHEMATHESIS_TIME_LIMIT_SECS:-600}"

command -v python3 >/dev/null || die "python3 not found"
if [[ ! -x $venv/bin/schemathesis ]]; then
  say "installing schemathesis into $venv"
  # Debian's python3 needs its venv module from a package of its own.
  python3 -m venv "$venv" 2>/dev/null || {
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q -r "$requirements"
fi

# GET (or POST of a JSON body) with python3, which this script needs anyway.
http() {
  python3 - "$@" <<'PY'
import json, sys, urllib.request
url, token, body = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
request = urllib.request.Request(url, data=body.encode() if body else None)
if token:
    request.add_header("Authorization", "Bearer " + token)
if body:
    request.add_header("Content-Type", "application/json")
with urllib.request.urlopen(request, timeout=5) as response:
    sys.stdout.write(response.read().decode())
PY
}

psql_bin="$(find_pg_bindir)/psql"
[[ -x $psql_bin ]] || psql_bin="$(command -v psql || true)"
[[ -n $psql_bin ]] || die "psql not found"
db="iotcore_schemathesis_$$_$RANDOM"
"$psql_bin" -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
# The database URL with its path replaced by the new database.
db_url="$(printf '%s' "$DATABASE_URL" | sed -E "s#^(postgres(ql)?://[^/]*)(/[^?]*)?#\\1/$db#")"

export IOTCORE_PROFILE=dev IOTCORE_DATABASE_URL="$db_url"
export IOTCORE_API_AUTH_HS256_SECRET="schemathesis-secret-$RANDOM$RANDOM$RANDOM"
log="$(mktemp "${TMPDIR:-/tmp}/iotcore-schemathesis.XXXXXX")"
server=""
stop() {
  local status=$?
  if [[ -n $server ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  "$psql_bin" -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  if ((status != 0)); then
    say "iotcore's log:"
    tail -n 50 "$log" >&2 || true
  fi
  rm -f "$log"
  exit "$status"
}
trap stop EXIT

ready=""
for _attempt in 1 2 3 4 5; do
  port="$(free_port)" || die "no free TCP port found"
  IOTCORE_API_LISTEN="127.0.0.1:$port" "$IOTCORE_BIN" serve --only api >"$log" 2>&1 &
  server=$!
  base="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    if http "$base/readyz" "" >/dev/null 2>&1; then
      ready=1
      break
    fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.2
  done
  [[ -n $ready ]] && break
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
  grep -q "Address already in use" "$log" || die "iotcore did not become ready"
  say "port $port was taken; trying another"
done
[[ -n $ready ]] || die "iotcore did not become ready"

operator="$("$IOTCORE_BIN" token --role operator --ttl-secs 7200)"
tenant="$(http "$base/v1/tenants" "$operator" '{"name":"schemathesis"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"

say "schemathesis against $base/openapi.json (tenant $tenant, $max_examples examples per operation)"
# Fresh Idempotency-Key values, as a real client sends (see the hooks file).
SCHEMATHESIS_HOOKS="$IOTCORE_ROOT/deploy/local/schemathesis_hooks.py" \
  timeout "$time_limit" "$venv/bin/schemathesis" run "$base/openapi.json" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "$max_examples" \
  --header "Authorization: Bearer $operator" \
  --header "X-Iotcore-Tenant: $tenant" \
  --no-color "$@"
