#!/usr/bin/env bash
# Start a real OAR 2.5.9 (Debian 12) batch scheduler on this host for the live
# tests: a private PostgreSQL cluster, the OAR server (Almighty) and one OAR
# node (OAR's own sshd on 127.0.0.1:6667), all on loopback.
#
#   .ci/live/start-oar.sh     # then oarsub/oarstat/oardel as root, from a writable cwd
#
# The single node "localhost" offers OAR_CORES=8 cores (one OAR resource each)
# whatever the machine has, so that jobs filling them leave further jobs
# Waiting; each core has the property memcore=OAR_MEMCORE (1000 MiB), for
# dask-jobqueue's memory_per_core_property_name="memcore". root may submit
# (the admission rule against it is deleted). Clients need no environment
# variables: every OAR command reads /etc/oar/oar.conf.
#
# State (database, logs, PID files) lives under $OAR_DIR; the system files
# written are /etc/oar/oar.conf (edited in place: OAR's setuid wrappers hard-wire
# that path), /run/sshd, OAR's per-job files in /var/lib/oar, and a temporary
# policy-rc.d during apt-get. Restarting is safe: whatever a previous run
# started is stopped first and the database is created afresh (job ids start
# at 1 again). Stop it with stop-oar.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIVE_DIR=${DASK_ADAPTIVE_LIVE_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live}
OAR_DIR=$LIVE_DIR/oar
CORES=${OAR_CORES:-8}
MEMCORE=${OAR_MEMCORE:-1000}
DB_PORT=${OAR_DB_PORT:-15432}          # not 5432: leave the system's cluster alone
NODE=localhost                          # network_address; must reach OAR's sshd
OAR_CONF=/etc/oar/oar.conf
# fixed secrets: the cluster listens on 127.0.0.1 only and is thrown away
DB_ADMIN_PASS=oar-live-admin DB_PASS=oar-live DB_RO_PASS=oar-live-ro

apt_install() {  # apt_install COMMAND|PATH... -- PACKAGE...: install unless every one exists
  local cmds=() missing=0
  while [ "$1" != -- ]; do cmds+=("$1"); shift; done; shift
  for c in "${cmds[@]}"; do command -v "$c" >/dev/null || [ -x "$c" ] || missing=1; done
  [ "$missing" = 1 ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$LIVE_DIR"
  # apt-get update once per machine, not once per script
  [ -f "$LIVE_DIR/.apt-updated" ] || { apt-get update -qq && touch "$LIVE_DIR/.apt-updated"; }
  # Without systemd, the postinst scripts would start postgresql (port 5432),
  # the system sshd (port 22), cron and oar-node's sshd (port 6667, the one we
  # need) through /etc/init.d. A policy-rc.d that says 101 stops them, as in
  # Docker images (which ship one; then it is left as it is).
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; own_policy=1
  fi
  # another apt-get (a test installing something) may hold the lock: wait
  local rc=0
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" \
    >"$LIVE_DIR/apt-oar.log" 2>&1 || rc=$?
  [ "$own_policy" = 0 ] || rm -f "$policy"
  [ "$rc" = 0 ] || { tail -n 20 "$LIVE_DIR/apt-oar.log" >&2; return 1; }
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

set_conf() {  # set_conf KEY VALUE: replace KEY="..." in oar.conf (commented or not), or append
  if grep -qE "^#? *$1=" "$OAR_CONF"; then
    sed -i -E "s|^#? *$1=.*|$1=\"$2\"|" "$OAR_CONF"
  else
    echo "$1=\"$2\"" >> "$OAR_CONF"
  fi
}
unset_conf() { sed -i -E "s|^($1=.*)|#\1|" "$OAR_CONF"; }

write_config() {
  rm -rf "$OAR_DIR"
  mkdir -p "$OAR_DIR"/{log,pg,pg-run}
  # the daemons run as postgres and oar, not root: they must reach $OAR_DIR
  chmod 755 "$LIVE_DIR" "$OAR_DIR"
  chown postgres:postgres "$OAR_DIR"/pg "$OAR_DIR"/pg-run
  chown oar:oar "$OAR_DIR"/log
  if ! runuser -u postgres -- test -w "$OAR_DIR/pg" || ! runuser -u oar -- test -w "$OAR_DIR/log"; then
    echo "start-oar.sh: users postgres and oar cannot reach $OAR_DIR (a parent directory" \
         "is not world-searchable?); set DASK_ADAPTIVE_LIVE_DIR under /tmp" >&2
    return 1
  fi
  set_conf DB_HOSTNAME 127.0.0.1
  set_conf DB_PORT "$DB_PORT"
  set_conf DB_BASE_PASSWD "$DB_PASS"
  set_conf DB_BASE_PASSWD_RO "$DB_RO_PASS"
  set_conf SERVER_HOSTNAME localhost
  set_conf LOG_FILE "$OAR_DIR/log/oar.log"
  # Run the scheduler on every submission/end. With the default 5 (or even 1)
  # a job submitted that soon after the last run is postponed ("Scheduler call
  # too early") until Almighty's next wake-up, up to 10 s later: workers then
  # started 2 s or 12 s after oarsub, at random.
  set_conf SCHEDULER_MIN_TIME_BETWEEN_2_CALLS 0
  # No cpusets/cgroups in a container: job_resource_manager_cgroups.pl would
  # fail every job. Without this field OAR runs no resource-manager script.
  unset_conf JOB_RESOURCE_MANAGER_PROPERTY_DB_FIELD
  unset_conf CPUSET_PATH
}

start_postgres() {
  local bin; bin=$(pg_bin)
  echo "$DB_ADMIN_PASS" > "$OAR_DIR/pg-run/pwfile"
  # postgres refuses to run as root; -N: no fsync, the cluster is throw-away
  runuser -u postgres -- "$bin/initdb" -N -D "$OAR_DIR/pg" -U postgres -E UTF8 \
    --no-locale -A scram-sha-256 --pwfile="$OAR_DIR/pg-run/pwfile" >"$OAR_DIR/log/initdb.log"
  rm -f "$OAR_DIR/pg-run/pwfile"
  runuser -u postgres -- "$bin/pg_ctl" -D "$OAR_DIR/pg" -l "$OAR_DIR/pg-run/postgres.log" -w \
    -o "-c port=$DB_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$OAR_DIR/pg-run -c fsync=off" \
    start >/dev/null
}

create_database() {
  # --db-type: otherwise oar-database takes DB_PORT from oar.conf over --db-port
  (cd "$OAR_DIR" && oar-database --create --db-type=Pg --db-host=127.0.0.1 --db-port="$DB_PORT" \
     --db-admin-user=postgres --db-admin-pass="$DB_ADMIN_PASS" \
     --db-user=oar --db-pass="$DB_PASS" --db-ro-user=oar_ro --db-ro-pass="$DB_RO_PASS" \
     >"$OAR_DIR/log/oar-database.log" 2>&1) \
    || { cat "$OAR_DIR/log/oar-database.log" >&2; return 1; }
}

add_resources() {
  # The resource hierarchy dask-jobqueue asks for: /nodes=1/core=N ("nodes"
  # is network_address). One row per core, all on $NODE. memcore (MiB): what
  # OARJob's "#OAR -p memcore>=N" selects on, if told the property's name.
  local p
  for p in cpu core memcore; do oarproperty -q -a "$p" >/dev/null; done
  oarproperty -q -c -a host >/dev/null
  local i
  for i in $(seq 1 "$CORES"); do
    oarnodesetting -a -h "$NODE" -p host="$NODE" -p cpu=1 -p core="$i" \
      -p cpuset=$((i - 1)) -p memcore="$MEMCORE" >/dev/null
  done
}

fix_job_bashrc() {
  # Every job runs as "bash -c CMD" with BASH_ENV=~oar/.batch_job_bashrc,
  # which sources the user's ~/.bashrc and stays exported. root's ~/.bashrc
  # runs 'eval "$(pyenv init -)"': with BASH_ENV each bash pyenv starts read it
  # again (a fork bomb), and without, every job still ran 'pyenv rehash',
  # whose lock file a job cancelled in its first 0.1 s leaves behind: every
  # later job (and shell) then waited 60 s for it. The jobs need nothing from
  # ~/.bashrc (dask-jobqueue's scripts name python by its full path).
  local f=/var/lib/oar/.batch_job_bashrc
  printf '%s\n' '# start-oar.sh: nothing from ~/.bashrc (see fix_job_bashrc)' \
    'unset BASH_ENV' > "$f"
}

start_node_sshd() {
  # oar-node is only an sshd on port 6667 that lets in the oar user, through
  # which the server starts each job (oarexec). Its own config, but our PID
  # file and log; loopback only.
  mkdir -p /run/sshd; chmod 755 /run/sshd
  /usr/sbin/sshd -f /etc/oar/sshd_config -o PidFile="$OAR_DIR/oar-node-sshd.pid" \
    -o ListenAddress=127.0.0.1 -E "$OAR_DIR/log/oar-node-sshd.log"
}

start_server() {
  # /usr/sbin/oar-server would write /var/run/oar-server.pid; start Almighty
  # (a setuid wrapper that execs the Perl daemon, same PID) in its own session
  setsid /usr/sbin/Almighty </dev/null >>"$OAR_DIR/log/almighty.out" 2>&1 &
  echo $! > "$OAR_DIR/almighty.pid"
}

allow_root() {
  # Admission rule "Prevent users oar and root to submit jobs" rejects root's
  # oarsub ("[ADMISSION RULE] root and oar users are not allowed to submit
  # jobs."); nothing else in OAR minds root: its jobs then run as root. The
  # tests run as root with root's Python (/root is 0700, so another user could
  # not even start it), hence delete the rule. Found by its text, not its id.
  local id
  id=$(oaradmissionrules -S | awk '/^--- \(/ {id = $NF; sub("#", "", id)}
                                   /^# Prevent users oar and root/ {print id}')
  [ -z "$id" ] || oaradmissionrules -d "$id" >/dev/null
}

wait_until_a_job_runs() {
  local id="" out state
  for _ in $(seq 100); do
    [ "$(oarnodes -s 2>/dev/null | grep -c Alive)" -ge 1 ] && break
    sleep 0.2
  done
  # the job runs in the directory oarsub was called from, where OAR writes
  # OAR.<name>.<id>.stdout/.stderr: it must be writable by the job's user
  # (else the job goes to Error: "Cannot create .stdout and .stderr files")
  mkdir -p "$OAR_DIR/probe"
  out=$(cd "$OAR_DIR/probe" && oarsub -l /nodes=1/core=1 -n probe true 2>&1) || true
  id=$(sed -n 's/^OAR_JOB_ID=//p' <<<"$out")
  if [ -z "$id" ]; then
    echo "start-oar.sh: oarsub failed:" >&2; echo "$out" >&2; return 1
  fi
  for _ in $(seq 150); do
    state=$(oarstat -s -j "$id" 2>/dev/null | sed -n "s/^$id: //p")
    [ "$state" = Terminated ] && return 0
    [ "$state" = Error ] && break
    sleep 0.2
  done
  echo "start-oar.sh: probe job $id did not terminate (state: ${state:-?}); see $OAR_DIR/log" >&2
  oarstat -f -j "$id" >&2 || true
  tail -n 20 "$OAR_DIR/log/oar.log" >&2 || true
  return 1
}

# one apt-get for all; PostgreSQL of any version (the newest installed is used)
apt_install oarsub oarstat oardel oarnodes oar-database Almighty sshd "$(pg_bin)/initdb" -- \
  oar-server oar-server-pgsql oar-node oar-user oar-user-pgsql openssh-server postgresql
"$HERE/stop-oar.sh"
write_config
start_postgres
create_database
add_resources
allow_root
fix_job_bashrc
start_node_sshd
start_server
wait_until_a_job_runs
echo "oar: node $NODE x $CORES cores (memcore=$MEMCORE MiB each), root may submit, a probe job ran; no client env needed; state in $OAR_DIR"
