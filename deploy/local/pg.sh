#!/usr/bin/env bash
# A private PostgreSQL cluster in a data folder, for development and tests.
#
#   pg.sh start <datadir> <port>   create the cluster if needed, start it if it is not
#                                  running, create database "iotcore", print its URL
#   pg.sh stop <datadir>           stop the cluster if it is running
#
# The cluster listens on 127.0.0.1 only, trusts local connections (user "postgres", no
# password) and keeps its unix socket in the data folder, so it never collides with a
# system-wide PostgreSQL.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  say "usage: ${0##*/} start <datadir> <port> | stop <datadir>"
  exit 2
}

# PostgreSQL refuses to run as root, so root runs it as the "postgres" user.
as_pg() {
  if is_root; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_bindir() {
  local dir
  dir="$(find_pg_bindir)"
  if [[ -z $dir ]]; then
    if is_root; then
      # Only the server binaries are wanted, not the package's own system-wide cluster.
      mkdir -p /etc/postgresql-common/createcluster.d
      printf 'create_main_cluster = false\n' >/etc/postgresql-common/createcluster.d/iotcore.conf
    fi
    apt_install postgresql
    dir="$(find_pg_bindir)"
    [[ -n $dir ]] || die "PostgreSQL was installed but initdb/pg_ctl are still not found"
  fi
  printf '%s' "$dir"
}

# Root's folders (such as /root) are often closed to other users; the postgres user needs
# to pass through every parent of the data folder.
make_reachable() {
  local dir="$1" parents=() d
  d="$(dirname "$dir")"
  while [[ $d != / ]]; do
    parents=("$d" "${parents[@]}")
    d="$(dirname "$d")"
  done
  for d in "${parents[@]}"; do
    if ! runuser -u postgres -- test -x "$d"; then
      say "pg.sh: letting the postgres user pass through $d (chmod o+x) to reach $dir"
      chmod o+x "$d"
    fi
  done
}

start() {
  local datadir="$1" port="$2" bindir socket_opt url
  [[ $port =~ ^[0-9]+$ ]] || die "port must be a number: $port"
  bindir="$(pg_bindir)"
  mkdir -p "$datadir"
  datadir="$(cd "$datadir" && pwd)"
  if is_root; then
    id postgres >/dev/null 2>&1 || die "user 'postgres' is missing (it comes with Debian's postgresql package)"
    chown postgres:postgres "$datadir"
    make_reachable "$datadir"
  fi
  chmod 700 "$datadir"

  if [[ ! -f $datadir/PG_VERSION ]]; then
    say "pg.sh: creating a PostgreSQL cluster in $datadir"
    as_pg "$bindir/initdb" -D "$datadir" --auth=trust -U postgres --encoding=UTF8 --locale=C >"$datadir.initdb.log" 2>&1 ||
      die "initdb failed; see $datadir.initdb.log"
    rm -f "$datadir.initdb.log"
    cat >>"$datadir/postgresql.conf" <<'CONF'

# Written by deploy/local/pg.sh (port and socket folder are given when starting).
listen_addresses = '127.0.0.1'
max_connections = 300
shared_buffers = 128MB
CONF
  fi

  # A unix socket path is limited to ~107 bytes; a deeply nested data folder goes TCP only.
  if ((${#datadir} + 16 <= 100)); then
    socket_opt="-k '$datadir'"
  else
    socket_opt="-k ''"
  fi
  if as_pg "$bindir/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
    say "pg.sh: PostgreSQL is already running in $datadir"
  else
    say "pg.sh: starting PostgreSQL on 127.0.0.1:$port"
    as_pg "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 -o "-p $port $socket_opt" start >/dev/null ||
      die "PostgreSQL did not start; see $datadir/server.log"
  fi

  url="postgres://postgres@127.0.0.1:$port"
  ensure_database "$bindir" "$port" iotcore
  printf '%s/iotcore\n' "$url"
}

ensure_database() {
  local bindir="$1" port="$2" name="$3" psql=psql
  [[ -x $bindir/psql ]] && psql="$bindir/psql"
  local exists
  exists="$(as_pg "$psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$name'")" || die "cannot query PostgreSQL on port $port"
  if [[ $exists != 1 ]]; then
    as_pg "$psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE $name" >/dev/null
  fi
}

stop() {
  local datadir="$1" bindir
  [[ -f $datadir/PG_VERSION ]] || return 0
  bindir="$(find_pg_bindir)"
  [[ -n $bindir ]] || die "initdb/pg_ctl not found"
  if as_pg "$bindir/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
    as_pg "$bindir/pg_ctl" -D "$datadir" -m fast -w -t 60 stop >/dev/null
    say "pg.sh: stopped PostgreSQL in $datadir"
  fi
}

case "${1:-}" in
  start)
    [[ $# -eq 3 ]] || usage
    start "$2" "$3"
    ;;
  stop)
    [[ $# -eq 2 ]] || usage
    stop "$2"
    ;;
  *) usage ;;
esac
