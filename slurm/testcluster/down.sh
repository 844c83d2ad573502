#!/usr/bin/env bash
# Stop the test cluster that up.sh started; --purge also deletes its state directory
# (job records, accounting database, logs). munged is left running: other users may need it.
set -uo pipefail

STATE=${CLEFTGAN_SLURM_DIR:-/tmp/cleftgan-slurm}
export SLURM_CONF="$STATE/etc/slurm.conf"

stop() {  # stop NAME PIDFILE: TERM, then KILL after 10 s
  local pidfile=$2 pid
  [[ -f "$pidfile" ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    echo "[testcluster] stopping $1 ($pid)" >&2
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

if [[ -f "$SLURM_CONF" ]] && command -v scancel >/dev/null; then
  scancel --full --quiet --user=root 2>/dev/null || true
fi
stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
stop slurmdbd "$STATE/run/slurmdbd.pid"
stop mariadbd "$STATE/mysql/mysqld.pid"
if [[ "${1:-}" == "--purge" ]]; then
  rm -rf "$STATE"
  echo "[testcluster] removed $STATE" >&2
fi
