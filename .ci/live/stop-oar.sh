#!/usr/bin/env bash
# Stop the OAR started by start-oar.sh (Almighty, OAR's node sshd, PostgreSQL)
# and the jobs still running, by PID files only: ours under $OAR_DIR, and the
# one OAR writes per running job (/var/lib/oar/pid_of_oarexec_for_jobId_N; a
# job's oarexec detaches from the sshd session that started it).
set -uo pipefail
LIVE_DIR=${DASK_ADAPTIVE_LIVE_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live}
OAR_DIR=${OAR_DIR:-$LIVE_DIR/oar}
OAR_RUN=/var/lib/oar    # OAR_RUNTIME_DIRECTORY, the oar user's home

tree() {  # tree PID: PID and every process below it, from one ps snapshot
  ps -eo pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { q[1] = root; n = 1
          for (i = 1; i <= n; i++) { print q[i]; m = split(kids[q[i]], k, " ")
                                     for (j = 1; j <= m; j++) q[++n] = k[j] } }'
}

stop_tree() {  # stop_tree PID SIGNAL_FOR_PID SIGNAL_FOR_THE_REST
  local t
  mapfile -t t < <(tree "$1")
  # all stopped first, so that nothing forks or is re-parented meanwhile
  kill -STOP "${t[@]}" 2>/dev/null
  [ "${#t[@]}" -lt 2 ] || kill "-$3" "${t[@]:1}" 2>/dev/null
  kill "-$2" "$1" 2>/dev/null
  kill -CONT "${t[@]}" 2>/dev/null
  pids+=("${t[@]}")
}
running() {  # running PIDFILE WORD: sets pid; true if it runs a command line with WORD
  [ -f "$1" ] && pid=$(cat "$1") && [ -n "$pid" ] &&
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

pids=()
# A job's oarexec catches SIGTERM to kill the job and then report to the
# server, retrying for long since the server is going: SIGKILL it, SIGTERM
# the job (a dask worker's nanny then shuts down cleanly).
for f in "$OAR_RUN"/pid_of_oarexec_for_jobId_*; do
  running "$f" OAREXEC && stop_tree "$pid" KILL TERM
  rm -f "$f"
done
# Almighty and its appendice, sarko, bipbip, NodeChangeState...: SIGKILL, as
# there is nothing to save (the database is thrown away); on SIGTERM it waits
# for its current step, which may hang on the database (8 s seen).
if running "$OAR_DIR/almighty.pid" Almighty; then stop_tree "$pid" KILL KILL; fi
rm -f "$OAR_DIR/almighty.pid"
# OAR's node sshd (its sessions: jobs being launched)
if running "$OAR_DIR/oar-node-sshd.pid" sshd; then stop_tree "$pid" TERM TERM; fi
rm -f "$OAR_DIR/oar-node-sshd.pid"
# OAR's per-job node files (N, N_resources): stale once the database is new
rm -f "$OAR_RUN"/[0-9]* 2>/dev/null
# postmaster: SIGINT is PostgreSQL's "fast" shutdown (pg_ctl stop -m fast)
if [ -f "$OAR_DIR/pg/postmaster.pid" ]; then
  pid=$(head -n 1 "$OAR_DIR/pg/postmaster.pid")
  kill -INT "$pid" 2>/dev/null && pids+=("$pid")
fi
# a zombie is gone too: here PID 1 may not reap the orphans it inherits
alive() {  # the state follows the last ")" (the command name may hold spaces)
  local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "${st%% *}" != Z ]
}
# wait, so that a restart can bind the same ports; insist after 8 s
for i in $(seq 50); do
  alive=()
  for pid in "${pids[@]}"; do alive "$pid" && alive+=("$pid"); done
  [ "${#alive[@]}" = 0 ] && break
  [ "$i" = 40 ] && kill -9 "${alive[@]}" 2>/dev/null
  sleep 0.2
done
true
