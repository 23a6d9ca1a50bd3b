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

# A TCP port on 127.0.0.1 that nothing listens on, drawn below the kernel's ephemeral range
# (32768 and up by default), where no outgoing connection can be holding it.
free_port() {
  local port _
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 12000)) # below the ephemeral range
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      printf '%s' "$port"
      return 0
    fi
  done
  die "no free TCP port found"
}

# Waits (at most 30 s) until something listens on port $1 of 127.0.0.1.
wait_port() {
  local _
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on port $1"
}
