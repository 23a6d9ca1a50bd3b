# shellcheck shell=bash
# What the benchmark scripts in tests/load/ share (sourced, not run): their options, the
# build, a work folder removed at exit with every process started in it, a private
# PostgreSQL, iotcore on free loopback ports, Mosquitto, provisioning through the API, a
# time limit, and the first lines of a report.
#
# A script sets `set -euo pipefail`, sets `here` to its folder and sources this file; the
# functions below set the variables named in their comments.

# shellcheck source-path=SCRIPTDIR/../../deploy/local
# shellcheck source=../../deploy/local/common.sh
source "$here/../../deploy/local/common.sh"
cd "$IOTCORE_ROOT"

# --- Options ---------------------------------------------------------------------------------

# Parses [--quick], and [--only LOAD[,LOAD..]] when the script passes its loads (a
# comma-separated list) as $1; the rest are the script's arguments.
# Sets: quick (0|1), only (the loads asked for, comma-separated; empty: all of them).
parse_bench_args() {
  local loads="$1" usage="usage: ${0##*/} [--quick]" load
  shift
  [[ -n $loads ]] && usage+=" [--only LOAD[,LOAD..]] (LOAD: ${loads//,/, })"
  quick=0 only=""
  while (($#)); do
    case "$1" in
      --quick) quick=1 ;;
      --only | --only=*)
        [[ -n $loads ]] || die "$usage"
        if [[ $1 == --only ]]; then
          (($# >= 2)) || die "$usage"
          only="$2"
          shift
        else
          only="${1#--only=}"
        fi
        [[ -n ${only//,/} ]] || die "$usage"
        ;;
      -h | --help)
        say "$usage"
        exit 0
        ;;
      *) die "$usage" ;;
    esac
    shift
  done
  if [[ -n $only ]]; then
    for load in ${only//,/ }; do
      [[ ,$loads, == *",$load,"* ]] || die "unknown load: $load ($usage)"
    done
  fi
}

# True when load $1 is to run (no --only, or --only names it).
runs() { [[ -z $only || ,$only, == *",$1,"* ]]; }

# --- Tools and binaries ----------------------------------------------------------------------

# Installs (as root) or asks for the commands given; "mosquitto" may live in /usr/sbin.
# Sets mosquitto_bin when asked for mosquitto.
need_tools() {
  local tool
  for tool in "$@"; do
    case "$tool" in
      mosquitto)
        command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || apt_install mosquitto
        mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
        ;;
      *) command -v "$tool" >/dev/null || apt_install "$tool" ;;
    esac
  done
}

# Builds iotcore and iotcore-load (release) into CARGO_TARGET_DIR. With --iotcore-bin-from-env,
# IOTCORE_BIN (when set) runs another iotcore binary instead of building this checkout's.
# Sets: iotcore_bin, load_bin.
build_bench_binaries() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$IOTCORE_ROOT/target}"
  if [[ ${1:-} == --iotcore-bin-from-env && -n ${IOTCORE_BIN:-} ]]; then
    # Another build of iotcore (an earlier commit, say) against the same load generator.
    say "building iotcore-load (release) into $CARGO_TARGET_DIR; iotcore is $IOTCORE_BIN"
    cargo build --release -q -p iotcore-load
    iotcore_bin="$IOTCORE_BIN"
  else
    say "building iotcore and iotcore-load (release) into $CARGO_TARGET_DIR"
    cargo build --release -q -p iotcore -p iotcore-load
    iotcore_bin="$CARGO_TARGET_DIR/release/iotcore"
  fi
  load_bin="$CARGO_TARGET_DIR/release/iotcore-load"
}

# What the report names iotcore by: IOTCORE_BIN when the script runs another binary, else
# this checkout's commit.
iotcore_version() {
  if [[ ${1:-} == --iotcore-bin-from-env && -n ${IOTCORE_BIN:-} ]]; then
    printf '%s' "$IOTCORE_BIN"
  else
    git -C "$IOTCORE_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown
  fi
}

# --- Work folder, processes and cleanup ------------------------------------------------------

# Makes the work folder ${TMPDIR:-/tmp}/iotcore-$1.XXXXXX and, at exit, stops every process
# started with track_pid, the PostgreSQL in $work/pg (if any) and removes the folder.
# Sets: work, pids.
make_workdir() {
  work="$(mktemp -d "${TMPDIR:-/tmp}/iotcore-$1.XXXXXX")"
  chmod 755 "$work"
  pids=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
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

track_pid() { pids+=("$1"); }

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

# Stops the whole run after $1 seconds: says that the time limit ($2, the variable that sets
# it) was exceeded, ends this script's running commands and exits with status 1 (cleanup
# included). A command that does not end on SIGTERM keeps the script waiting, so every
# command run meanwhile has to be bounded on its own as well.
time_limit() {
  local seconds="$1" setting="$2" script="${0##*/}" main=$$
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$seconds" &
    sleeper=$!
    wait "$sleeper"
    say "$script: stopped: the run took longer than its time limit of $seconds s ($setting)"
    kill -USR1 "$main" 2>/dev/null || true
    end_descendants "$main"
  ) &
  track_pid $!
  trap 'exit 1' USR1
}

# Ends (SIGTERM) the processes started by process $1 and theirs, except the calling shell.
end_descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1"); do
    [[ $child == "$BASHPID" ]] && continue
    end_descendants "$child"
    kill "$child" 2>/dev/null || true
  done
}

# --- PostgreSQL ------------------------------------------------------------------------------

# Starts a private PostgreSQL in $work/pg on a free port.
# Sets: pg_port, database_url, postgres_pid.
start_pg() {
  pg_port="$(free_port)"
  database_url="$("$IOTCORE_ROOT/deploy/local/pg.sh" start "$work/pg" "$pg_port")"
  postgres_pid="$(head -n1 "$work/pg/postmaster.pid")"
}

# --- iotcore ---------------------------------------------------------------------------------

# Exports iotcore's settings for free loopback ports: the API, MQTT over TCP and, with
# --tls CERT KEY, MQTT over TLS; no WebSocket listeners.
# Sets: api_port, mqtt_port, tls_port (empty without --tls).
iotcore_env() {
  api_port="$(free_port)"
  mqtt_port="$(free_port)"
  tls_port=""
  export IOTCORE_PROFILE=dev IOTCORE_DATABASE_URL="$database_url"
  export IOTCORE_API_LISTEN="127.0.0.1:$api_port" IOTCORE_MQTT_TCP_LISTEN="127.0.0.1:$mqtt_port"
  export IOTCORE_MQTT_WS_LISTEN="" IOTCORE_MQTT_WSS_LISTEN="" IOTCORE_MQTT_TLS_LISTEN=""
  if [[ ${1:-} == --tls ]]; then
    tls_port="$(free_port)"
    export IOTCORE_MQTT_TLS_LISTEN="127.0.0.1:$tls_port"
    export IOTCORE_MQTT_TLS_CERT_FILE="$2" IOTCORE_MQTT_TLS_KEY_FILE="$3"
  fi
}

# Starts iotcore (logging to $work/iotcore.log) and waits (at most 30 s) until its API is
# ready and its MQTT listeners accept connections.
# Sets: iotcore_pid.
start_iotcore() {
  "$iotcore_bin" serve >>"$work/iotcore.log" 2>&1 &
  iotcore_pid=$!
  track_pid "$iotcore_pid"
  local _
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$api_port/readyz" >/dev/null 2>&1 && break
    kill -0 "$iotcore_pid" 2>/dev/null || die "iotcore exited; see $work/iotcore.log"
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$api_port/readyz" >/dev/null || die "iotcore is not ready; see $work/iotcore.log"
  wait_port "$mqtt_port"
  [[ -z $tls_port ]] || wait_port "$tls_port"
}

stop_iotcore() {
  stop_pid "$iotcore_pid"
  iotcore_pid=""
}

# Creates a tenant, a registry and $1 devices with passwords through the API
# (tests/load/provision.py; $2: the file of "device_id password" lines, then provision.py's
# options). Sets: provisioned (provision.py's JSON), tenant, registry, registry_password.
provision() {
  local devices="$1" ids="$2" operator
  shift 2
  operator="$("$iotcore_bin" token --role operator)"
  provisioned="$(python3 "$here/provision.py" "http://127.0.0.1:$api_port" "$operator" \
    "$iotcore_bin token --role admin --tenant" "$devices" "$ids" "$@")"
  tenant="$(json_field tenant <<<"$provisioned")"
  registry="$(json_field registry <<<"$provisioned")"
  registry_password="$(json_field registry_password <<<"$provisioned")"
}

# Prints field $1 of the JSON object on stdin.
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# --- Mosquitto -------------------------------------------------------------------------------

# Starts Mosquitto on a free loopback port. $1: extra configuration lines (empty: Mosquitto's
# defaults); $2: false to refuse anonymous clients.
# Sets: mosquitto_pid, mosquitto_port.
start_mosquitto() {
  mosquitto_port="$(free_port)"
  {
    printf 'listener %s 127.0.0.1\nallow_anonymous %s\n' "$mosquitto_port" "${2:-true}"
    printf '%s\n' "${1:-}"
  } >"$work/mosquitto.conf"
  "$mosquitto_bin" -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
  mosquitto_pid=$!
  track_pid "$mosquitto_pid"
  wait_port "$mosquitto_port"
}

# --- Report ----------------------------------------------------------------------------------

# The report's file: tests/load/results/$1-<time>[-quick].txt (the folder is made).
report_file() {
  local suffix=""
  ((quick)) && suffix="-quick"
  mkdir -p "$here/results"
  printf '%s/results/%s-%s%s.txt' "$here" "$1" "$(date -u +%Y%m%dT%H%M%SZ)" "$suffix"
}

# The report's first lines: $1 (the title), the time, the command ($2, its options), the
# machine and its load average.
report_header() {
  printf '%s, %s%s\n' "$1" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$( ((quick)) && echo ' (--quick)')"
  printf 'command: %s\n' "$2"
  printf 'machine: %s, %s cores, %s; %s\n' "$(uname -sr)" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" \
    "$(free -g | awk '/^Mem:/ {print $2 " GiB RAM"}')"
  printf 'load average before the report: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
}
