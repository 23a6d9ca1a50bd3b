# shellcheck shell=bash
# Settings and helpers shared by the scripts in deploy/local/ (sourced, not run).

IOTCORE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Where run.sh keeps its private PostgreSQL cluster, and the port it listens on. The
# binary's default database.url points at exactly this cluster.
IOTCORE_DATA_DIR="${IOTCORE_DATA_DIR:-$IOTCORE_ROOT/data}"
IOTCORE_PG_PORT="${IOTCORE_PG_PORT:-5433}"

say() { printf '%s\n' "$*" >&2; }
die() {
  say "${0##*/}: $*"
  exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# The release binary run.sh builds and iotcore.sh runs.
iotcore_release_bin() { printf '%s\n' "${CARGO_TARGET_DIR:-$IOTCORE_ROOT/target}/release/iotcore"; }

build_release() {
  command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
  (cd "$IOTCORE_ROOT" && cargo build --release -p iotcore)
}

# The folder holding initdb and pg_ctl (the newest PostgreSQL installed), or nothing.
find_pg_bindir() {
  local dir found=""
  while IFS= read -r dir; do
    [[ -x $dir/initdb && -x $dir/pg_ctl ]] && found="$dir"
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
  if [[ -z $found ]] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    found="$(dirname "$(command -v pg_ctl)")"
  fi
  printf '%s' "$found"
}

# Installs Debian packages when running as root; otherwise says what to install.
apt_install() {
  if is_root && command -v apt-get >/dev/null; then
    say "installing ${*} from the Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "$@" >&2
  else
    die "missing: ${*}; install with: sudo apt-get install ${*}"
  fi
}
