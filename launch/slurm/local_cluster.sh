#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests and for trying the slurm backend.
#
#   launch/slurm/local_cluster.sh start    # idempotent: munge key + munged, slurm.conf, slurmctld, slurmd
#   launch/slurm/local_cluster.sh status   # exit 0 when the partition answers (sinfo)
#   launch/slurm/local_cluster.sh stop
#
# Needs root and Debian's packages:  apt-get install -y slurm-wlm munge
# Config and state live in $SLURM_LOCAL_DIR (default /tmp/scaling_train_slurm); the node is this
# host's short name with all its CPUs, in one partition "debug" (the default).
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/scaling_train_slurm}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"

need() { command -v "$1" >/dev/null 2>&1 || { echo "missing $1: apt-get install -y slurm-wlm munge" >&2; exit 3; }; }

as_user() {  # run a command as another user (runuser or sudo, whichever exists)
  local user="$1"; shift
  if command -v runuser >/dev/null 2>&1; then runuser -u "$user" -- "$@"; else sudo -u "$user" "$@"; fi
}

start_munge() {
  need munged
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    pkill_pidfile /run/munge/munged.pid
    as_user munge munged --force
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

write_conf() {
  mkdir -p "$CONF_DIR" "$DIR/state" "$DIR/spool" "$DIR/log"
  local tmp; tmp="$(mktemp)"
  cat >"$tmp" <<CONF
# Written by launch/slurm/local_cluster.sh (scaling_train tests); one node, one partition.
ClusterName=scaling_train_local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
MinJobAge=30
KillWait=10
InactiveLimit=0
SlurmdTimeout=60
MaxArraySize=10001
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  if ! cmp -s "$tmp" "$CONF"; then mv "$tmp" "$CONF"; CHANGED=1; else rm -f "$tmp"; fi
  chmod 0644 "$CONF"
  # cgroup.conf is read by some builds even with proctrack/linuxproc
  [ -f "$CONF_DIR/cgroup.conf" ] || echo "CgroupPlugin=autodetect" >"$CONF_DIR/cgroup.conf"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
pkill_pidfile() { if pid_alive "$1"; then kill "$(cat "$1")" 2>/dev/null || true; sleep 0.5; fi; }

status() {
  pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" \
    && timeout 10 sinfo -h -p debug -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

start() {
  need slurmctld; need slurmd; need sinfo
  CHANGED=0
  start_munge
  write_conf
  if [ "$CHANGED" = 1 ]; then stop_daemons; fi
  pid_alive "$DIR/slurmctld.pid" || slurmctld -i
  pid_alive "$DIR/slurmd.pid" || slurmd
  for _ in $(seq 60); do
    if status; then echo "slurm: node $NODE ($CPUS CPUs) up in partition debug; logs in $DIR/log"; return 0; fi
    # a node left DOWN/DRAIN by an earlier session: resume it
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  echo "slurm did not come up; see $DIR/log/slurmctld.log and $DIR/log/slurmd.log" >&2
  sinfo >&2 || true
  return 1
}

stop_daemons() {
  pkill_pidfile "$DIR/slurmd.pid"
  pkill_pidfile "$DIR/slurmctld.pid"
}

case "${1:-status}" in
  start) start ;;
  stop) stop_daemons; echo "slurm stopped (munged left running)" ;;
  status) if status; then echo "slurm up"; else echo "slurm down"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
