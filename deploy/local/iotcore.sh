#!/usr/bin/env bash
# Runs the iotcore binary that run.sh builds, with the same environment, so that for
# example a token it mints is accepted by the server run.sh started:
#
#   ./deploy/local/iotcore.sh token --role operator
#   ./deploy/local/iotcore.sh serve --print-config
#
# It neither starts PostgreSQL nor rebuilds a binary that exists already.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bin="$(iotcore_release_bin)"
[[ -x $bin ]] || build_release
export IOTCORE_DATABASE_URL="${IOTCORE_DATABASE_URL:-postgres://postgres@127.0.0.1:$IOTCORE_PG_PORT/iotcore}"
export IOTCORE_PROFILE="${IOTCORE_PROFILE:-dev}"
exec "$bin" "$@"
