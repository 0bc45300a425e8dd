#!/usr/bin/env bash
# Stop what tests/slurm/start.sh started (by the pid files it wrote), and wait until every daemon has exited.
set -uo pipefail
R=${SLURM_ROOT:-/tmp/isorobust-slurm}
export SLURM_CONF=$R/etc/slurm.conf
scancel --user="$(id -un)" 2>/dev/null
for _ in $(seq 150); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
stop_pidfiles() {   # SIGTERM every pid named in the given pid files, then wait for all (each takes ~2 s)
  local pids=() f p alive
  for f in "$@"; do [ -s "$f" ] && p=$(cat "$f") && kill "$p" 2>/dev/null && pids+=("$p"); done
  for _ in $(seq 150); do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0; sleep 0.2
  done
  echo "still alive: ${pids[*]}" >&2; return 1
}
stop_pidfiles "$R/run/slurmd.pid" "$R/run/slurmctld.pid" "$R/run/slurmdbd.pid"
stop_pidfiles /run/mysqld/mysqld.pid /run/munge/munged.pid
