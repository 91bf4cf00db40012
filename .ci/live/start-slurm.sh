#!/usr/bin/env bash
# Start a real Slurm (Debian 12's 22.05) on this host for the live tests.
#
#   .ci/live/start-slurm.sh && . .ci/live/env.sh
#
# NODES=4 (default) fakes four nodes n1..n4, one slurmd each, all on 127.0.0.1;
# each advertises CPUS=8 CPUs and MEM=8000 MB whatever the machine has, so that
# jobs filling every node leave further jobs PENDING. Everything (config, state,
# logs, PID files) lives under $SLURM_DIR; no system file is written except
# munge's runtime dir. Restarting is safe: a Slurm started here before is
# stopped first. Stop it with stop-slurm.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIVE_DIR=${DASK_ADAPTIVE_LIVE_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live}
SLURM_DIR=$LIVE_DIR/slurm
NODES=${NODES:-4}; CPUS=${CPUS:-8}; MEM=${MEM:-8000}
HOST=$(hostname)

apt_install() {  # apt_install COMMAND... -- PACKAGE...: install unless every command exists
  local cmds=() missing=0
  while [ "$1" != -- ]; do cmds+=("$1"); shift; done; shift
  for c in "${cmds[@]}"; do command -v "$c" >/dev/null || missing=1; done
  [ "$missing" = 1 ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$LIVE_DIR"
  # apt-get update once per machine, not once per script
  [ -f "$LIVE_DIR/.apt-updated" ] || { apt-get update -qq && touch "$LIVE_DIR/.apt-updated"; }
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

start_munge() {
  # the package's postinst generated /etc/munge/munge.key; reuse a running munged
  mkdir -p /run/munge && chown munge:munge /run/munge
  munge -n >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.1; done
  echo "start-slurm.sh: munged does not answer" >&2; return 1
}

write_config() {
  rm -rf "$SLURM_DIR"; mkdir -p "$SLURM_DIR"/{state,log,spool}
  # proctrack/linuxproc + task/none: no cgroups (none in a container);
  # config_overrides: nodes may advertise more CPUs than the machine has;
  # RealMemory: dask-jobqueue always sends --mem, which needs node memory.
  cat > "$SLURM_DIR/slurm.conf" <<CONF
ClusterName=dasktest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool/slurmd-%n
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd-%n.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=60
KillWait=5
InactiveLimit=0
CONF
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17000 + i))" \
         "CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
  done >> "$SLURM_DIR/slurm.conf"
  # debug: every node (the default); cpu and gpu: half the nodes each, for the
  # tests of pools that map to partitions (two pools, one per partition)
  local half=$((NODES / 2))
  {
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=cpu Nodes=n[1-$half] MaxTime=INFINITE State=UP"
    echo "PartitionName=gpu Nodes=n[$((half + 1))-$NODES] MaxTime=INFINITE State=UP"
  } >> "$SLURM_DIR/slurm.conf"
}

start_daemons() {
  export SLURM_CONF=$SLURM_DIR/slurm.conf
  slurmctld
  for i in $(seq 1 "$NODES"); do
    mkdir -p "$SLURM_DIR/spool/slurmd-n$i"
    slurmd -N "n$i"
  done
}

wait_until_idle() {
  for _ in $(seq 150); do
    [ "$(sinfo -h -t idle -o '%D' 2>/dev/null)" = "$NODES" ] && return 0
    sleep 0.2
  done
  echo "start-slurm.sh: the $NODES nodes did not become idle; see $SLURM_DIR/log" >&2
  sinfo -N >&2 || true
  tail -n 20 "$SLURM_DIR/log/slurmctld.log" >&2 || true
  return 1
}

apt_install slurmctld slurmd sbatch munged -- slurm-wlm munge
start_munge
SLURM_DIR=$SLURM_DIR "$HERE/stop-slurm.sh" --keep-munge
write_config
start_daemons
wait_until_idle
sinfo -N
echo "slurm: $NODES nodes x $CPUS CPUs; export SLURM_CONF=$SLURM_DIR/slurm.conf (in env.sh)"
