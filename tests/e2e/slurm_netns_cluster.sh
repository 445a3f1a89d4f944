#!/usr/bin/env bash
# A real two-node SLURM cluster on this machine: slurmctld and slurmd on host 1,
# slurmd on host 2, the hosts being the network namespaces of netns_hosts.sh.
#   slurm_netns_cluster.sh start DIR        namespaces up, DIR/slurm.conf, daemons;
#                                           waits until both nodes are idle
#   slurm_netns_cluster.sh stop DIR         the daemons (by their pid files), then the namespaces
#   slurm_netns_cluster.sh run DIR CMD...   run CMD (sbatch, scontrol, dist-train slurm submit, ...)
#                                           on host 1 against this cluster
# It has its own slurm.conf (SLURM_CONF=DIR/slurm.conf) and its daemons listen
# only inside the namespaces, so a one-node cluster of slurm_cluster.sh on the
# machine itself is not disturbed. Install SLURM first: slurm_cluster.sh install.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hosts="$here/netns_hosts.sh"
prefix=${DTN_PREFIX:-dtn}
h1=$prefix-h1
h2=$prefix-h2
cmd=${1:?start|stop|run}
dir=$(realpath -m "${2:?state directory}")
export SLURM_CONF=$dir/slurm.conf

case "$cmd" in
start)
    mkdir -p "$dir"/{state,log}
    bash "$here/slurm_cluster.sh" munge  # one munged serves both hosts: its socket is a file
    bash "$hosts" up
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    cpus=$(nproc)
    # %n: both slurmds share this file system, each needs its own spool, pid and log
    cat > "$SLURM_CONF" <<CONF
ClusterName=dist-train-netns
SlurmctldHost=$h1(10.200.0.1)
$(bash "$here/slurm_cluster.sh" common-conf)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
NodeName=$h1 NodeAddr=10.200.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=$h2 NodeAddr=10.200.0.2 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    # the daemons fork into the background and stay on their host (namespace)
    bash "$hosts" exec 1 slurmctld -i
    bash "$hosts" exec 1 slurmd -N "$h1"
    bash "$hosts" exec 2 slurmd -N "$h2"
    for _ in $(seq 1 150); do
        if [ "$(bash "$hosts" exec 1 sinfo -h -N -o %t 2>/dev/null | grep -cE '^(idle|mix)')" -eq 2 ]; then
            exit 0
        fi
        sleep 0.2
    done
    echo "slurm_netns_cluster.sh: the nodes did not become idle; see $dir/log" >&2
    exit 1
    ;;
stop)
    for pidfile in "$dir"/slurmd-*.pid "$dir/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    # what is left on the hosts (jobs, a daemon that did not stop) ends with them
    bash "$hosts" down
    ;;
run)
    shift 2
    exec bash "$hosts" exec 1 "$@"
    ;;
*)
    echo "usage: slurm_netns_cluster.sh start|stop|run DIR ..." >&2
    exit 2
    ;;
esac
