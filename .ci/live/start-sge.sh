#!/usr/bin/env bash
# Start a real (Son of) Grid Engine 8.1.9 (Debian 12) on this host: qmaster +
# execd, queue all.q with SGE_SLOTS=8 slots, root jobs allowed.
#
#   .ci/live/start-sge.sh && . .ci/live/env.sh     # SGE_ROOT, SGE_CELL
#
# Idempotent: a qmaster/execd that is already running is reused. Stop it with
# stop-sge.sh (the qmaster takes ~10 s to exit).
set -euo pipefail

LIVE_DIR=${DASK_ADAPTIVE_LIVE_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live}
WORK=$LIVE_DIR/sge
SLOTS=${SGE_SLOTS:-8}
HOST=$(hostname)
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
QMASTER_PID=/var/spool/gridengine/qmaster/qmaster.pid

install_gridengine() {
  [ -x /usr/sbin/sge_qmaster ] && [ -x /usr/sbin/sge_execd ] && return
  export DEBIAN_FRONTEND=noninteractive
  # the packages configure a cell for the master host named here
  for p in gridengine-common gridengine-master gridengine-client; do
    echo "$p shared/gridenginemaster string $HOST"
    echo "$p shared/gridenginecell string default"
    echo "$p shared/gridengineconfig boolean true"
  done | debconf-set-selections
  mkdir -p "$LIVE_DIR"
  [ -f "$LIVE_DIR/.apt-updated" ] || { apt-get update -qq && touch "$LIVE_DIR/.apt-updated"; }
  apt-get install -y -qq --no-install-recommends \
    gridengine-master gridengine-exec gridengine-client >/dev/null
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_qmaster() {
  # 127.0.0.1 reverse-resolves to "localhost" (first in /etc/hosts), not to
  # $HOST: without this alias every client call times out after ~60 s.
  echo "$HOST localhost" > "$SGE_ROOT/$SGE_CELL/common/host_aliases"
  mkdir -p /run/gridengine && chown sgeadmin:sgeadmin /run/gridengine
  running "$QMASTER_PID" || /usr/sbin/sge_qmaster
  for _ in $(seq 150); do qconf -sh >/dev/null 2>&1 && return; sleep 0.2; done
  echo "start-sge.sh: sge_qmaster does not answer" >&2; return 1
}

configure() {
  mkdir -p "$WORK"; cd "$WORK"
  # root jobs (min_uid/min_gid default to 1000, else they sit in Eqw), no mail
  qconf -sconf global | sed -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' \
                            -e 's#^mailer .*#mailer /bin/true#' > global
  qconf -Mconf global >/dev/null      # the file must be named "global"
  # schedule every second instead of every 15
  qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
                      -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
                      -e 's/^flush_finish_sec .*/flush_finish_sec 1/' > sched.conf
  qconf -Msconf sched.conf >/dev/null
  qconf -as "$HOST" >/dev/null 2>&1 || true
  printf '%s\n' "hostname $HOST" 'load_scaling NONE' 'complex_values NONE' \
    'user_lists NONE' 'xuser_lists NONE' 'projects NONE' 'xprojects NONE' \
    'usage_scaling NONE' 'report_variables NONE' > exechost
  qconf -se "$HOST" >/dev/null 2>&1 || qconf -Ae exechost >/dev/null
  printf 'group_name @allhosts\nhostlist %s\n' "$HOST" > allhosts
  qconf -shgrp @allhosts >/dev/null 2>&1 || qconf -Ahgrp allhosts >/dev/null
  # 'qconf -sq' without a name prints the template
  qconf -sq | sed -e 's/^qname .*/qname all.q/' -e 's/^hostlist .*/hostlist @allhosts/' \
    -e 's/^load_thresholds .*/load_thresholds NONE/' -e 's/^pe_list .*/pe_list NONE/' \
    -e "s/^slots .*/slots $SLOTS/" -e 's#^shell .*#shell /bin/bash#' > all.q
  qconf -sq all.q >/dev/null 2>&1 || qconf -Aq all.q >/dev/null
}

start_execd() {
  # after the configuration: execd caches min_uid when it starts. Its spool
  # directory is named by the resolved host name ("localhost" with the alias).
  local f up=0
  for f in /var/spool/gridengine/execd/*/execd.pid; do running "$f" && up=1; done
  [ "$up" = 1 ] || /usr/sbin/sge_execd
  for _ in $(seq 150); do
    qstat -f -q all.q 2>/dev/null | grep '^all.q@' | grep -qv -- '-NA-' && return
    sleep 0.2
  done
  echo "start-sge.sh: the execd did not report to the qmaster" >&2
  qstat -f >&2 || true; return 1
}

install_gridengine
start_qmaster
configure
start_execd
qstat -f
echo "sge: all.q@$HOST with $SLOTS slots; export SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL (in env.sh)"
