#!/usr/bin/env bash
# Start a single-node Slurm cluster with accounting for the tests (root only, Debian 12).
#
#   slurm/testcluster/up.sh            install what is missing, start, wait until usable
#   eval "$(slurm/testcluster/up.sh --env)"   ... and export SLURM_CONF into this shell
#
# Daemons: munged, mariadbd, slurmdbd, slurmctld, slurmd. Fake GPUs through gres (character
# devices), partitions 'low' (default, preemptible with REQUEUE) and 'high' (preempts low),
# a small MaxArraySize. All state, logs and pid files live in $CLEFTGAN_SLURM_DIR
# (default /tmp/cleftgan-slurm). Running it again when the cluster is up is a no-op.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${CLEFTGAN_SLURM_DIR:-/tmp/cleftgan-slurm}
HOST=$(hostname -s)
GPUS=${CLEFTGAN_SLURM_GPUS:-4}
MAX_ARRAY=${CLEFTGAN_SLURM_MAX_ARRAY:-8}
CTLD_PORT=${CLEFTGAN_SLURM_PORT:-16817}
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT=${CLEFTGAN_SLURM_DB_PORT:-13306}
CONF="$STATE/etc/slurm.conf"
export SLURM_CONF="$CONF"

print_env=0
[[ "${1:-}" == "--env" ]] && print_env=1
log() { echo "[testcluster $(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (it installs packages and starts system daemons)"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - t0 < limit )) || die "$what did not come up in ${limit}s (logs in $STATE/log)"
    sleep 0.2
  done
}

emit_env() { (( print_env )) && echo "export SLURM_CONF=$CONF" || true; }

# -- already up? -------------------------------------------------------------------------------
# Every daemon, accounting included (sacct needs mariadbd behind slurmdbd): a partly dead
# cluster falls through and each missing daemon is started again below.
if alive "$STATE/run/slurmctld.pid" && alive "$STATE/run/slurmd.pid" && alive "$STATE/run/slurmdbd.pid" \
   && alive "$STATE/mysql/mysqld.pid" && scontrol ping 2>/dev/null | grep -q UP \
   && sacct -n -X -S now >/dev/null 2>&1; then
  log "already up (SLURM_CONF=$CONF)"
  emit_env
  exit 0
fi

# -- packages (idempotent: only what is missing) ------------------------------------------------
PKGS=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # Post-install scripts cannot start services here; we start the daemons ourselves below.
  apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >&2
fi

mkdir -p "$STATE"/{etc,ctld,spool,log,run,dev,mysql}
chmod 700 "$STATE/etc"

# -- configuration from the templates -------------------------------------------------------------
DB_PASS_FILE="$STATE/etc/db_pass"
[[ -s "$DB_PASS_FILE" ]] || (umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DB_PASS_FILE")
DB_PASS=$(cat "$DB_PASS_FILE")
render() {  # render TEMPLATE OUT
  sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" -e "s|@GPUS@|$GPUS|g" -e "s|@LAST_GPU@|$((GPUS - 1))|g" \
      -e "s|@MAX_ARRAY@|$MAX_ARRAY|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
      -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" -e "s|@DB_PASS@|$DB_PASS|g" "$1" >"$2"
}
render "$HERE/slurm.conf.in" "$CONF"
render "$HERE/gres.conf.in" "$STATE/etc/gres.conf"
render "$HERE/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf"
chmod 600 "$STATE/etc/slurmdbd.conf"
for ((i = 0; i < GPUS; i++)); do
  [[ -c "$STATE/dev/nvidia$i" ]] || { rm -f "$STATE/dev/nvidia$i"; mknod "$STATE/dev/nvidia$i" c 1 3; }
done

# -- munge ---------------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  [[ -s /etc/munge/munge.key ]] || { /usr/sbin/mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged sh -c 'munge -n | unmunge'
fi

# -- mariadb (accounting database) ------------------------------------------------------------------
SOCK="$STATE/mysql/mysqld.sock"
sql() { mariadb --socket="$SOCK" -u root -e "$1"; }
if ! alive "$STATE/mysql/mysqld.pid"; then
  log "starting mariadbd on 127.0.0.1:$DB_PORT"
  chown -R mysql:mysql "$STATE/mysql"
  if [[ ! -d "$STATE/mysql/data/mysql" ]]; then
    mariadb-install-db --user=mysql --datadir="$STATE/mysql/data" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $STATE/log/mariadb-install.log"
  fi
  runuser -u mysql -- /usr/sbin/mariadbd --no-defaults --datadir="$STATE/mysql/data" --socket="$SOCK" \
    --pid-file="$STATE/mysql/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --innodb-buffer-pool-size=64M --log-error="$STATE/log/mariadb.log" >/dev/null 2>&1 &
  wait_for 30 mariadbd sql "SELECT 1"
  sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
       ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
fi

# -- slurmdbd, the cluster record, slurmctld, slurmd ----------------------------------------------------
if ! alive "$STATE/run/slurmdbd.pid"; then
  log "starting slurmdbd"
  /usr/sbin/slurmdbd  # reads slurmdbd.conf from the directory of $SLURM_CONF
  wait_for 30 slurmdbd sacctmgr -n list cluster
fi
if ! sacctmgr -n -P list cluster format=cluster | grep -qx cleftgan; then
  sacctmgr -i add cluster cleftgan >/dev/null
fi
if ! alive "$STATE/run/slurmctld.pid"; then
  log "starting slurmctld"
  /usr/sbin/slurmctld -f "$CONF"
  wait_for 30 slurmctld sh -c 'scontrol ping | grep -q UP'
fi
if ! alive "$STATE/run/slurmd.pid"; then
  log "starting slurmd (node $HOST: 8 CPUs, $GPUS fake GPUs)"
  /usr/sbin/slurmd -f "$CONF"
fi
node_ready() { sinfo -h -n "$HOST" -o %T | grep -Eq '^(idle|mixed|allocated)'; }
wait_for 30 "node $HOST" node_ready
log "up: partitions low (default, preemptible) and high; MaxArraySize=$MAX_ARRAY; SLURM_CONF=$CONF"
emit_env
