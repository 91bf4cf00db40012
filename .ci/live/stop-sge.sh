#!/usr/bin/env bash
# Stop the Grid Engine started by start-sge.sh, by its PID files only.
set -uo pipefail
pids=()
for f in /var/spool/gridengine/execd/*/execd.pid /var/spool/gridengine/qmaster/qmaster.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null && pids+=("$pid")
done
# the qmaster needs ~10 s to exit; wait so that a restart finds its port free
for _ in $(seq 100); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.2
done
true
