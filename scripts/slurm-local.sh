#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the tests and for trying the hpc/ scripts:
# munge (the system key) plus slurmctld and slurmd with a private slurm.conf, all state under one
# directory. Needs root (slurmd launches jobs) and the Debian packages slurm-wlm and munge.
#
#   scripts/slurm-local.sh start   # prints the SLURM_CONF to export
#   scripts/slurm-local.sh stop
#
# The node declares 4 CPUs whatever the machine has (SlurmdParameters=config_overrides) so that a
# day's controller, a few 1-CPU workers and the finalize job fit on a small CI machine.
set -euo pipefail

dir=${SLURM_LOCAL_DIR:-/tmp/streaming-pipeline-slurm}
conf=$dir/slurm.conf
ctld_port=${SLURM_LOCAL_CTLD_PORT:-6817}
slurmd_port=${SLURM_LOCAL_SLURMD_PORT:-6818}
node=$(hostname -s)

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- munged
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "slurm-local: munged did not start" >&2
    exit 1
}

write_job_scripts() {
    # Like a cluster's: each job gets its own TMPDIR, made before its first task and deleted
    # when it ends (a controller's TMPDIR is gone before the workers it submitted start).
    mkdir -p "$dir/tmp"
    cat >"$dir/task-prolog.sh" <<'SH'
#!/bin/sh
tmp="$(dirname "$0")/tmp/job_$SLURM_JOB_ID"
mkdir -p "$tmp"
echo "export TMPDIR=$tmp"
SH
    cat >"$dir/epilog.sh" <<'SH'
#!/bin/sh
rm -rf "$(dirname "$0")/tmp/job_$SLURM_JOB_ID"
SH
    chmod 755 "$dir/task-prolog.sh" "$dir/epilog.sh"
}

write_conf() {  # to $1
    mkdir -p "$dir/state" "$dir/spool"
    write_job_scripts
    cat >"$1" <<CONF
# written by scripts/slurm-local.sh
ClusterName=streaming-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): short, for the tests.
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
TaskProlog=$dir/task-prolog.sh
Epilog=$dir/epilog.sh
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# Start jobs that just became eligible (a requeued job after cred_expire) within seconds, not 60 s.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=600
# Small, so that the tests see a range of days split into several arrays (Slurm's default: 1001).
MaxArraySize=5
NodeName=$node NodeAddr=127.0.0.1 CPUs=4 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {  # a controller answers on our port ($1: a slurm.conf naming it)
    SLURM_CONF=$1 timeout 20 scontrol ping 2>/dev/null | grep -q "is UP"
}

ours() {  # the controller answering on our port runs with our slurm.conf (not a foreign Slurm's)
    local config
    config=$(SLURM_CONF=$1 timeout 20 scontrol show config 2>/dev/null) || return 1
    grep -qE "^TaskProlog +=  *$dir/task-prolog.sh\$" <<<"$config" &&
        grep -qE "^StateSaveLocation +=  *$dir/state\$" <<<"$config"
}

foreign() {  # a Slurm we did not start answers on our port: say so, and touch nothing of it
    local prolog
    prolog=$(SLURM_CONF=$1 timeout 20 scontrol show config 2>/dev/null | sed -n 's/^TaskProlog *= *//p')
    echo "slurm-local: a Slurm controller this script did not start answers on 127.0.0.1:$ctld_port" \
        "(TaskProlog=${prolog:-none}; ours is $dir/task-prolog.sh). Stop it, or start this one on" \
        "other ports: SLURM_LOCAL_CTLD_PORT=6827 SLURM_LOCAL_SLURMD_PORT=6828 $0 start" >&2
    exit 1
}

stop() {
    for daemon in slurmd slurmctld; do
        if [ -s "$dir/$daemon.pid" ]; then
            kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
        fi
    done
    sleep 1
    rm -f "$dir"/*.pid
}

case "${1:-start}" in
start)
    [ "$(id -u)" -eq 0 ] || { echo "slurm-local: needs root (slurmd launches jobs)" >&2; exit 1; }
    command -v slurmctld >/dev/null || { echo "slurm-local: install slurm-wlm and munge" >&2; exit 1; }
    export SLURM_CONF=$conf
    write_conf "$conf.new"
    if cmp -s "$conf" "$conf.new" && up "$conf"; then
        rm -f "$conf.new"
        ours "$conf" || foreign "$conf"
        echo "$conf"
        exit 0
    fi
    stop  # not running, or running with another configuration
    if up "$conf.new"; then  # still answering once ours are stopped: not ours
        foreign "$conf.new"
    fi
    start_munge
    mv "$conf.new" "$conf"
    slurmctld -f "$conf"
    slurmd -f "$conf" -N "$node"
    for _ in $(seq 100); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            ours "$conf" || foreign "$conf"
            echo "$conf"
            exit 0
        fi
        sleep 0.2
    done
    echo "slurm-local: node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    sinfo -R >&2 || true
    exit 1
    ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
