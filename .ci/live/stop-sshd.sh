#!/usr/bin/env bash
# Stop the sshd started by start-sshd.sh (by its PID file only).
set -uo pipefail
SSH_DIR=${DASK_ADAPTIVE_SSH_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live/ssh}
PID_FILE=$SSH_DIR/sshd.pid
if [ -f "$PID_FILE" ]; then
  pid=$(cat "$PID_FILE")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  rm -f "$PID_FILE"
fi
true
