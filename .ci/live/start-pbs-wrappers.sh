#!/usr/bin/env bash
# PBS/Torque-style qsub/qstat/qdel: Slurm's perl wrappers (Debian package
# slurm-wlm-torque) on top of the Slurm from start-slurm.sh. This tests PBS
# command plumbing (#PBS directives, qsub/qstat/qdel output), not a PBS server.
#
#   .ci/live/start-slurm.sh && .ci/live/start-pbs-wrappers.sh && . .ci/live/env.sh
#   PATH=$DASK_ADAPTIVE_PBS_BIN:$PATH qstat
#
# The package is unpacked into $PBS_WRAP/bin, not installed: it conflicts with
# gridengine-client, whose qsub/qstat/qdel must stay on the default PATH.
# Nothing runs: there is nothing to stop (stop-pbs-wrappers.sh removes the dir).
set -euo pipefail

LIVE_DIR=${DASK_ADAPTIVE_LIVE_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live}
PBS_WRAP=$LIVE_DIR/pbs-wrappers
export SLURM_CONF=${SLURM_CONF:-$LIVE_DIR/slurm/slurm.conf}
PERL_PACKAGES=(libslurm-perl libslurmdb-perl libswitch-perl)

install_perl_modules() {
  dpkg -s "${PERL_PACKAGES[@]}" >/dev/null 2>&1 && return
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$LIVE_DIR"
  [ -f "$LIVE_DIR/.apt-updated" ] || { apt-get update -qq && touch "$LIVE_DIR/.apt-updated"; }
  apt-get install -y -qq --no-install-recommends "${PERL_PACKAGES[@]}" >/dev/null
}

unpack_wrappers() {
  rm -rf "$PBS_WRAP"; mkdir -p "$PBS_WRAP/bin"; cd "$PBS_WRAP"
  # apt-get download runs as user _apt: the directory must be writable by it
  chmod 777 "$PBS_WRAP"
  apt-get download -qq slurm-wlm-torque 2>/dev/null \
    || { apt-get update -qq && apt-get download -qq slurm-wlm-torque; }
  dpkg-deb -x slurm-wlm-torque_*.deb root
  cp root/usr/bin/* bin/
  # the wrappers call sbatch, squeue... from their own directory (FindBin)
  for b in sbatch squeue scancel scontrol srun salloc sinfo sacct; do
    ln -sf "$(command -v $b || echo /usr/bin/$b)" "bin/$b"
  done
}

check_wrappers() {
  if ! sinfo -h >/dev/null 2>&1; then
    echo "start-pbs-wrappers.sh: Slurm is not running (start-slurm.sh first)" >&2
    return 1
  fi
  # the wrapper's qstat exits 153 when it lists no job
  local rc=0
  PATH=$PBS_WRAP/bin:$PATH qstat >/dev/null || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 153 ]
}

install_perl_modules
unpack_wrappers
check_wrappers
echo "pbs wrappers: PATH=$PBS_WRAP/bin:\$PATH (DASK_ADAPTIVE_PBS_BIN in env.sh)"
