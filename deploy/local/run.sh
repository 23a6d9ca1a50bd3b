#!/usr/bin/env bash
# THE RUN COMMAND: builds iotcore and runs all of it on this machine in the dev profile.
#
#   ./deploy/local/run.sh [serve flags…]     e.g. --only api, --print-config
#
# Unless IOTCORE_DATABASE_URL is set, PostgreSQL is a private cluster in ./data/postgres on
# 127.0.0.1:5433 (IOTCORE_DATA_DIR and IOTCORE_PG_PORT move it), created on first run and
# left running afterwards; stop it with ./deploy/local/pg.sh stop data/postgres.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

build_release
if [[ -z ${IOTCORE_DATABASE_URL:-} ]]; then
  IOTCORE_DATABASE_URL="$("$IOTCORE_ROOT/deploy/local/pg.sh" start "$IOTCORE_DATA_DIR/postgres" "$IOTCORE_PG_PORT")"
  export IOTCORE_DATABASE_URL
fi
export IOTCORE_PROFILE="${IOTCORE_PROFILE:-dev}"
exec "$(iotcore_release_bin)" serve "$@"
