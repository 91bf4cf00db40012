#!/usr/bin/env bash
# Start a key-only OpenSSH server on loopback for the ssh backend's live tests.
#
#   .ci/live/start-sshd.sh && . .ci/live/env-ssh.sh
#
# Listens on 127.0.0.1:$DASK_ADAPTIVE_SSH_PORT (2222), accepts only the client key
# it generates under $DASK_ADAPTIVE_SSH_DIR (${TMPDIR:-/tmp}/dask-adaptive-live/ssh),
# and writes the exports the tests read to .ci/live/env-ssh.sh. Idempotent: a
# server already started by this script is reused. Stop it with stop-sshd.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SSH_DIR=${DASK_ADAPTIVE_SSH_DIR:-${TMPDIR:-/tmp}/dask-adaptive-live/ssh}
SSH_PORT=${DASK_ADAPTIVE_SSH_PORT:-2222}
SSH_HOST=127.0.0.1
ENV_FILE=$HERE/env-ssh.sh

install_openssh_server() {
  [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null && return
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
}

make_keys() {
  mkdir -p "$SSH_DIR" /run/sshd
  chmod 755 "$SSH_DIR" /run/sshd   # sshd refuses a privilege-separation dir others can write
  [ -f "$SSH_DIR/ssh_host_ed25519_key" ] \
    || ssh-keygen -q -t ed25519 -N '' -C dask-adaptive-live-host -f "$SSH_DIR/ssh_host_ed25519_key"
  [ -f "$SSH_DIR/client_key" ] \
    || ssh-keygen -q -t ed25519 -N '' -C dask-adaptive-live-client -f "$SSH_DIR/client_key"
  cp "$SSH_DIR/client_key.pub" "$SSH_DIR/authorized_keys"
  chmod 644 "$SSH_DIR/authorized_keys"
  # So that clients can check the host key instead of trusting it blindly; both
  # names, so that tests can treat them as two hosts.
  echo "[$SSH_HOST]:$SSH_PORT,[localhost]:$SSH_PORT $(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")" \
    > "$SSH_DIR/known_hosts"
}

write_sshd_config() {
  # StrictModes no: the keys live under a temp dir whose parents sshd would reject.
  cat > "$SSH_DIR/sshd_config" <<CONFIG
Port $SSH_PORT
ListenAddress $SSH_HOST
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $SSH_DIR/sshd.pid
AuthorizedKeysFile $SSH_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
CONFIG
}

sshd_running() {
  [ -f "$SSH_DIR/sshd.pid" ] && kill -0 "$(cat "$SSH_DIR/sshd.pid")" 2>/dev/null
}

can_log_in() {
  ssh -p "$SSH_PORT" -i "$SSH_DIR/client_key" \
      -o UserKnownHostsFile="$SSH_DIR/known_hosts" -o StrictHostKeyChecking=yes \
      -o BatchMode=yes -o ConnectTimeout=2 -o LogLevel=ERROR \
      "root@$SSH_HOST" true
}

wait_until_ready() {
  for _ in $(seq 50); do
    can_log_in 2>/dev/null && return 0
    sleep 0.2
  done
  echo "start-sshd.sh: sshd on $SSH_HOST:$SSH_PORT does not accept the client key;" \
       "see $SSH_DIR/sshd.log" >&2
  can_log_in || true
  tail -n 20 "$SSH_DIR/sshd.log" >&2 || true
  return 1
}

write_env_file() {
  cat > "$ENV_FILE.tmp" <<ENV
export DASK_ADAPTIVE_SSH_DIR=$(printf %q "$SSH_DIR")
export DASK_ADAPTIVE_SSH_HOST=$SSH_HOST
export DASK_ADAPTIVE_SSH_PORT=$SSH_PORT
export DASK_ADAPTIVE_SSH_KEY=$(printf %q "$SSH_DIR/client_key")
export DASK_ADAPTIVE_SSH_KNOWN_HOSTS=$(printf %q "$SSH_DIR/known_hosts")
ENV
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

install_openssh_server
make_keys
write_sshd_config
if ! sshd_running; then
  /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$SSH_DIR/sshd.log"
fi
wait_until_ready
write_env_file
echo "sshd: root@$SSH_HOST:$SSH_PORT, key $SSH_DIR/client_key (exports in $ENV_FILE)"
