#!/usr/bin/env bash
# The PBS wrappers run nothing; remove their directory. Stop Slurm with stop-slurm.sh.
LIVE_DIR=${DASK_ADAPTIVE_LIVE_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live}
rm -rf "$LIVE_DIR/pbs-wrappers"
true
