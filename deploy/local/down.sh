#!/usr/bin/env bash
# make down: stops what 'make up' started, by pidfile (.run/<name>.pid):
# SIGTERM, up to DOWN_TIMEOUT (15) seconds to drain, then SIGKILL.
# A pidfile whose process is gone (or is no longer ours) is just removed.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

running=()
for name in "${OM_BINARIES[@]}"; do
  pidfile=$OM_RUN/$name.pid
  [[ -f $pidfile ]] || continue
  pid=$(cat "$pidfile")
  if om_pid_alive "$pid" "$name"; then
    running+=("$name:$pid")
  else
    om_say "$name was not running (stale pidfile removed)"
    rm -f "$pidfile"
  fi
done

if ((${#running[@]} == 0)); then
  om_say "nothing to stop"
  exit 0
fi
om_say "stopping ${running[*]}"
om_stop_all "${DOWN_TIMEOUT:-15}" "${running[@]}"
for entry in "${running[@]}"; do
  rm -f "$OM_RUN/${entry%%:*}.pid"
done
om_say "stopped"
