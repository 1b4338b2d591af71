#!/usr/bin/env bash
# Single-node Slurm 22.05 (Debian 12) + munge + slurmdbd/MariaDB accounting, for the SLURM tests.
# Adapted from the shared recipe (recipes/slurm_single_node.sh): it returns at once when a
# cluster with accounting already answers, so a second caller (a parallel CI run, a developer's
# cluster) is not torn down and restarted under it.
# Usage: bash .ci/slurm_single_node.sh [--no-accounting]     (run as root)
# Stop:  bash .ci/slurm_single_node.sh --down
# Why accounting: without slurmdbd, submitit never learns that a job was cancelled and waits
# forever. Why AuthInfo=cred_expire=10: a requeued job becomes eligible after ~11 s, not 121 s.
set -euo pipefail
ACCT=1
t() { date +%s.%N; }
el() { printf '%.1f' "$(echo "$(t) - $1" | bc)"; }

stop_pidfile() {  # stop one daemon by its pid file, wait until gone
  local f=$1 p
  p=$(cat "$f" 2>/dev/null || true); [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$p" 2>/dev/null || true
}
if [ "${1:-}" = "--down" ]; then
  scancel --user=root 2>/dev/null || true; sleep 2
  for f in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/slurm/slurmdbd.pid /run/mysqld/ci-mariadb.pid /run/munge/munged.pid; do
    stop_pidfile "$f"; done
  exit 0
fi
[ "${1:-}" = "--no-accounting" ] && ACCT=0
if sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mix|alloc)' \
    && { [ $ACCT = 0 ] || sacctmgr -n list cluster 2>/dev/null | grep -q .; }; then
  echo "[slurm-setup] a SLURM cluster is already up; leaving it as it is"; sinfo; exit 0
fi

T0=$(t)
APTLOG=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
PKGS="slurmctld slurmd slurm-client munge"
[ $ACCT = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
apt-get install -y -q --no-install-recommends $PKGS >"$APTLOG" 2>&1 || { tail -30 "$APTLOG"; exit 1; }
echo "[slurm-setup] apt install: $(el $T0)s"

T1=$(t)
NCPU=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 3000 ))   # leave headroom
mkdir -p /etc/slurm /run/slurm /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /run/munge
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key

if [ $ACCT = 1 ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# requeued jobs become eligible after cred_expire+1 s (default 120 s); needs slurmctld (re)start, not reconfigure
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT_LINES
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
DefMemPerCPU=1000
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

runuser -u munge -- /usr/sbin/munged
for _ in $(seq 1 40); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done

if [ $ACCT = 1 ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  # mariadbd does not daemonize; setsid+nohup detaches it from this shell
  setsid nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --innodb-buffer-pool-size=64M \
      --pid-file=/run/mysqld/ci-mariadb.pid >/var/log/slurm/mariadb.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do mariadb -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.25; done
  mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >/etc/slurm/slurmdbd.conf <<'EOF'
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
  /usr/sbin/slurmdbd
  for _ in $(seq 1 120); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.25; done
  sacctmgr -i add cluster ci >/dev/null 2>&1 || true
fi

/usr/sbin/slurmctld
/usr/sbin/slurmd -N localhost
for _ in $(seq 1 120); do sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mix|alloc)' && break; sleep 0.25; done
sinfo
echo "[slurm-setup] configure+start: $(el $T1)s  total: $(el $T0)s"
