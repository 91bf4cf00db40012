# Source me:  . .ci/live/env.sh
# The variables the clients of the live systems need (Slurm, Grid Engine, PBS
# wrappers), for the paths the start-*.sh scripts use. Safe to source when a
# system is not running: the tests then skip it (or fail in CI).
_dask_live=${DASK_ADAPTIVE_LIVE_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live}
export DASK_ADAPTIVE_LIVE_DIR=$_dask_live

# Slurm: sbatch/squeue/scancel read this (no /etc/slurm/slurm.conf is written).
export SLURM_CONF=$_dask_live/slurm/slurm.conf

# Grid Engine: every client command needs both.
export SGE_ROOT=/var/lib/gridengine
export SGE_CELL=default

# PBS (Slurm's Torque-style wrappers). Their qsub/qstat/qdel clash with Grid
# Engine's, so PATH is NOT changed here: run PBS commands as
#   PATH=$DASK_ADAPTIVE_PBS_BIN:$PATH qstat
# (the pbs tests put this directory first on PATH for themselves).
export DASK_ADAPTIVE_PBS_BIN=$_dask_live/pbs-wrappers/bin
unset _dask_live
