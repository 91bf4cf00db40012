#!/usr/bin/env bash
# Stop the Slurm started by start-slurm.sh, by its PID files only.
#   --keep-munge: leave munged running (start-slurm.sh restarting Slurm).
set -uo pipefail
LIVE_DIR=${DASK_ADAPTIVE_LIVE_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live}
SLURM_DIR=${SLURM_DIR:-$LIVE_DIR/slurm}
pids=()
for f in "$SLURM_DIR"/slurmd-*.pid "$SLURM_DIR"/slurmctld.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null && pids+=("$pid")
  rm -f "$f"
done
if [ "${1:-}" != --keep-munge ] && [ -f /run/munge/munged.pid ]; then
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null
fi
# wait, so that a restart can bind the same ports
for _ in $(seq 50); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.2
done
true
