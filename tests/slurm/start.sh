#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine for the Slurm test (tests/test_sweeps_slurm.py):
# munge + MariaDB + slurmdbd + slurmctld + slurmd, as root, without systemd. State, logs and the config
# live under $SLURM_ROOT (default /tmp/isorobust-slurm); clients need SLURM_CONF=$SLURM_ROOT/etc/slurm.conf.
# Needs the Debian packages: slurmctld slurmd slurm-client slurmdbd munge mariadb-server (.ci/run installs them).
# slurmdbd (accounting) is there because submitit polls job states with sacct: without it, a job that dies
# without writing its result would leave the launcher waiting forever.
set -euo pipefail
R=${SLURM_ROOT:-/tmp/isorobust-slurm}
H=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') - 1024 ))   # MiB, a bit below physical
for pidfile in "$R"/run/slurmctld.pid /run/munge/munged.pid /run/mysqld/mysqld.pid; do
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "start.sh: a daemon of an earlier cluster still runs ($pidfile); run tests/slurm/stop.sh first" >&2; exit 1
  fi
done
mkdir -p "$R"/{etc,state/ctld,state/d,run,log}
export SLURM_CONF=$R/etc/slurm.conf

cat > "$R/etc/slurm.conf" <<CONF
ClusterName=isorobust-ci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$R/state/ctld
SlurmdSpoolDir=$R/state/d
SlurmctldPidFile=$R/run/slurmctld.pid
SlurmdPidFile=$R/run/slurmd.pid
SlurmctldLogFile=$R/log/slurmctld.log
SlurmdLogFile=$R/log/slurmd.log
# no cgroups: on this kind of VM proctrack/cgroup fails every step ("cgroup namespace 'freezer' not mounted")
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
NodeName=$H NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

cat > "$R/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
PidFile=$R/run/slurmdbd.pid
LogFile=$R/log/slurmdbd.log
CONF
chmod 600 "$R/etc/slurmdbd.conf"

# 1. munge (Debian's postinst normally creates the key)
[ -s /etc/munge/munge.key ] || mungekey --create
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null

# 2. MariaDB for slurmdbd (no systemd: run mariadbd directly, in its own session)
install -d -o mysql -g mysql -m 0755 /run/mysqld
setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
  --pid-file=/run/mysqld/mysqld.pid --skip-networking </dev/null >"$R/log/mariadb.log" 2>&1 &
for _ in $(seq 150); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.2; done
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# 3. slurmdbd, slurmctld, slurmd (each daemonizes and writes its pid file under $R/run)
slurmdbd
for _ in $(seq 150); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
slurmctld
slurmd

# 4. wait for the node to be idle and the cluster to be registered with slurmdbd (else sacct says nothing)
for _ in $(seq 300); do [ "$(sinfo -h -n "$H" -o %t 2>/dev/null)" = idle ] && break; sleep 0.2; done
if [ "$(sinfo -h -n "$H" -o %t)" != idle ]; then sinfo -N -l; tail -n 30 "$R"/log/*.log; exit 1; fi
for _ in $(seq 150); do [ -n "$(sacctmgr -n -P show cluster format=cluster)" ] && break; sleep 0.2; done
sinfo
echo "export SLURM_CONF=$SLURM_CONF"
