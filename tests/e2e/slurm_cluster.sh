#!/usr/bin/env bash
# A real one-node SLURM cluster (munge, slurmctld, slurmd) for the tests.
#   slurm_cluster.sh install   apt packages (root)
#   slurm_cluster.sh start DIR state, spool and logs under DIR; waits until the node is idle
#   slurm_cluster.sh stop DIR  stops the daemons started from DIR
#   slurm_cluster.sh munge     starts munged with a key of its own unless it runs
#                              (start does this; slurm_netns_cluster.sh uses it too)
#   slurm_cluster.sh common-conf  prints the slurm.conf lines both test clusters share
set -euo pipefail
cmd=${1:?install|start|stop|munge|common-conf}

common_conf() {
    # root daemons, munge, no accounting, cores as the unit, requeue allowed
    cat <<CONF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MpiDefault=none
CONF
}

start_munge() {
    # munge: a key of our own, owned by munge, and the daemon
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged --force
    munge -n | unmunge >/dev/null
}

case "$cmd" in
common-conf)
    common_conf
    ;;
munge)
    start_munge
    ;;
install)
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            slurmctld slurmd slurm-client munge >/dev/null
    fi
    ;;
start)
    dir=${2:?state directory}
    mkdir -p "$dir"/{state,spool,log}
    host=$(hostname)
    grep -q "[[:space:]]$host\$" /etc/hosts || echo "127.0.0.1 $host" >> /etc/hosts
    start_munge
    # RealMemory from MemTotal (stable), a little under it
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    cpus=$(nproc)
    mkdir -p /etc/slurm
    cat > /etc/slurm/slurm.conf <<CONF
ClusterName=dist-train-tests
SlurmctldHost=$host
$(common_conf)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    slurmctld -i
    slurmd
    for _ in $(seq 1 100); do
        if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix)'; then
            exit 0
        fi
        sleep 0.2
    done
    echo "slurm_cluster.sh: the node did not become idle; see $dir/log" >&2
    exit 1
    ;;
stop)
    dir=${2:?state directory}
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    ;;
esac
