#!/usr/bin/env bash
# THE TEST COMMAND: formatting, lints, and every test of the workspace against a real
# PostgreSQL and real MQTT tools.
#
#   ./deploy/local/test.sh [extra nextest/cargo test arguments…]
#
# Installs what is missing (as root, from Debian's packages): mosquitto-clients, curl, jq and
# the PostgreSQL server. Starts a private PostgreSQL cluster in a temporary folder on a free port
# unless IOTCORE_TEST_DATABASE_URL names one, and stops it on exit. Builds into
# CARGO_TARGET_DIR (default ~/.cache/iotcore/target, kept between runs). Every step runs even
# when an earlier one failed; the exit status is non-zero if any failed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$IOTCORE_ROOT"

section() { printf '\n==== %s ====\n' "$*"; }

failed=()
step() {
  local name="$1"
  shift
  section "$name"
  if "$@"; then
    printf -- '---- %s: ok\n' "$name"
  else
    printf -- '---- %s: FAILED\n' "$name"
    failed+=("$name")
  fi
}

section "Prerequisites"
command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
missing=()
if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  missing+=(mosquitto-clients)
fi
# The README's quickstart, which a test runs as written, uses curl and jq.
for tool in curl jq; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ -z ${IOTCORE_TEST_DATABASE_URL:-} && -z "$(find_pg_bindir)" ]]; then
  if is_root; then
    # Only the server binaries are wanted, not the package's own system-wide cluster.
    mkdir -p /etc/postgresql-common/createcluster.d
    printf 'create_main_cluster = false\n' >/etc/postgresql-common/createcluster.d/iotcore.conf
  fi
  missing+=(postgresql)
fi
if ((${#missing[@]})); then
  apt_install "${missing[@]}"
fi
echo "mosquitto_pub: $(command -v mosquitto_pub)"

pg_tmp=""
cleanup() {
  local status=$?
  if [[ -n $pg_tmp ]]; then
    "$IOTCORE_ROOT/deploy/local/pg.sh" stop "$pg_tmp/data" || true
    rm -rf "$pg_tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section "PostgreSQL"
if [[ -n ${IOTCORE_TEST_DATABASE_URL:-} ]]; then
  database_url="$IOTCORE_TEST_DATABASE_URL"
  echo "using IOTCORE_TEST_DATABASE_URL"
else
  pg_tmp="$(mktemp -d "${TMPDIR:-/tmp}/iotcore-test.XXXXXX")"
  # The postgres user (when running as root) must be able to enter the folder.
  chmod 755 "$pg_tmp"
  database_url="$("$IOTCORE_ROOT/deploy/local/pg.sh" start "$pg_tmp/data" "$(free_port)")"
fi
export DATABASE_URL="$database_url" IOTCORE_TEST_DATABASE_URL="$database_url"
echo "DATABASE_URL=$DATABASE_URL"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/iotcore/target}"
mkdir -p "$CARGO_TARGET_DIR"
export IOTCORE_BIN="$CARGO_TARGET_DIR/debug/iotcore"
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

run_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
  else
    echo "cargo-nextest not found; using cargo test"
    cargo test --workspace --no-fail-fast "$@"
  fi
}

step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build -p iotcore" cargo build -p iotcore
step "deploy files" "$IOTCORE_ROOT/deploy/local/check-deploy.sh"
step "tests" run_tests "$@"
# Property-based fuzzing of the control plane against the built binary (no 5xx, every
# response as documented).
step "schemathesis" "$IOTCORE_ROOT/deploy/local/schemathesis.sh"

section "Summary"
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
