#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine (slurmctld + slurmd + munge), for the Slurm tests.
#
#   tests/slurm/local_cluster.sh start <state_dir>   start and wait idle; with SARCLIP_INSTALL_SLURM=1 it first
#                                                    installs Debian's slurm-wlm + munge if they are missing
#   tests/slurm/local_cluster.sh stop  <state_dir>   stop the daemons started from <state_dir>
#
# Everything the daemons write (config, state, spool, logs, pid files) lives in <state_dir>; clients find the
# cluster through SLURM_CONF=<state_dir>/slurm.conf. Needs root (daemons run as root, apt-get installs).
set -euo pipefail

action=${1:?usage: local_cluster.sh start|stop <state_dir>}
state=$(realpath -m "${2:?usage: local_cluster.sh start|stop <state_dir>}")
conf="$state/slurm.conf"

stop() {
    for daemon in slurmd slurmctld; do
        if [[ -f "$state/$daemon.pid" ]]; then
            kill "$(cat "$state/$daemon.pid")" 2>/dev/null || true
        fi
    done
}

if [[ $action == stop ]]; then
    stop
    exit 0
fi
[[ $action == start ]] || { echo "unknown action $action (expected start or stop)" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [[ ${SARCLIP_INSTALL_SLURM:-0} != 1 ]]; then
        echo "slurm-wlm/munge are not installed; set SARCLIP_INSTALL_SLURM=1 to install them with apt-get" >&2
        exit 3
    fi
    if [[ $(id -u) != 0 ]]; then
        echo "slurm-wlm/munge are not installed and installing them needs root" >&2
        exit 3
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$state"/{spool,ctld,log}
node=$(hostname -s)
# Free ports, so several clusters (parallel test runs) can live on one machine.
read -r ctld_port slurmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
cpus=$(nproc)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

# munge: one key, one daemon; reuse a running one (munge is per machine, not per cluster).
if ! pgrep -x munged >/dev/null; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
fi

# Containers have no systemd/cgroup delegation: track processes by /proc, no task affinity, no accounting.
cat > "$conf" <<CONF
ClusterName=local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=10
MpiDefault=none
SwitchType=switch/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
echo "# no cgroup plugins in use (proctrack/linuxproc, task/none)" > "$state/cgroup.conf"
export SLURM_CONF="$conf"

stop
slurmctld -f "$conf"
slurmd -f "$conf"

for _ in $(seq 1 60); do
    for daemon in slurmctld slurmd; do  # ours, not another cluster answering on the same ports
        if [[ -f "$state/$daemon.pid" ]] && ! kill -0 "$(cat "$state/$daemon.pid")" 2>/dev/null; then
            echo "$daemon exited; its log:" >&2
            tail -n 20 "$state/log/$daemon.log" >&2 || true
            exit 1
        fi
    done
    if [[ -f "$state/slurmctld.pid" && -f "$state/slurmd.pid" ]] && sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "SLURM_CONF=$conf"
        exit 0
    fi
    sleep 1
done
echo "the local Slurm node did not become idle; logs:" >&2
tail -n 20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
exit 1
