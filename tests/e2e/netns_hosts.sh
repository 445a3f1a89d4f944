#!/usr/bin/env bash
# Two "hosts" on this machine: network namespaces joined by a veth pair.
#   netns_hosts.sh up              make them (idempotent: an old pair is removed first)
#   netns_hosts.sh down            kill what runs inside them, remove namespaces, veths, hosts files
#   netns_hosts.sh exec N CMD...   run CMD on host N (1 or 2) under its own hostname and /etc/hosts
#   netns_hosts.sh link N up|down  bring host N's end of the link up or down
#
# Host N is namespace ${DTN_PREFIX}-hN with address 10.200.0.N/24 on veth
# ${DTN_PREFIX}-vN and hostname ${DTN_PREFIX}-hN (resolvable on both hosts).
# DTN_PREFIX (default dtn) keeps several users of one machine apart; the
# 10.200.0.0/24 addresses exist only inside these namespaces.
#
# `exec` enters the namespace with nsenter plus a private mount and UTS
# namespace (not `ip netns exec`, which remounts /sys: slurmd needs the
# host's), bind-mounts the host's hosts file over /etc/hosts and sets the
# hostname; without its own hostname a host resolves its name to 127.0.0.1
# and torch's rendezvous times out. Processes share this machine's file
# system and process table: a run directory is shared storage, and a test can
# kill a worker "on" a host by its pid.
set -euo pipefail
prefix=${DTN_PREFIX:-dtn}
ns() { echo "$prefix-h$1"; }
veth() { echo "$prefix-v$1"; }

down() {
    for n in 1 2; do
        local name; name=$(ns "$n")
        if [ -e "/run/netns/$name" ]; then
            # everything still running on the host goes first, or the namespace lingers
            local pids; pids=$(ip netns pids "$name" 2>/dev/null || true)
            if [ -n "$pids" ]; then
                kill -9 $pids 2>/dev/null || true
            fi
            ip netns delete "$name" 2>/dev/null || true
        fi
        ip link delete "$(veth "$n")" 2>/dev/null || true  # the peer end goes with it
        rm -rf "/etc/netns/$name"
    done
}

case "${1:?up|down|exec|link}" in
up)
    [ "$(id -u)" -eq 0 ] || { echo "netns_hosts.sh: needs root" >&2; exit 1; }
    down
    ip netns add "$(ns 1)"
    ip netns add "$(ns 2)"
    ip link add "$(veth 1)" type veth peer name "$(veth 2)"
    for n in 1 2; do
        ip link set "$(veth "$n")" netns "$(ns "$n")"
        ip -n "$(ns "$n")" addr add "10.200.0.$n/24" dev "$(veth "$n")"
        ip -n "$(ns "$n")" link set lo up
        ip -n "$(ns "$n")" link set "$(veth "$n")" up
        mkdir -p "/etc/netns/$(ns "$n")"
        printf '127.0.0.1 localhost\n10.200.0.1 %s\n10.200.0.2 %s\n' "$(ns 1)" "$(ns 2)" \
            > "/etc/netns/$(ns "$n")/hosts"
    done
    ;;
down)
    down
    ;;
exec)
    n=${2:?host number}; shift 2
    name=$(ns "$n")
    exec nsenter --net="/run/netns/$name" unshare --uts --mount sh -c \
        'mount --bind "/etc/netns/$1/hosts" /etc/hosts && hostname "$1" && shift && exec "$@"' sh "$name" "$@"
    ;;
link)
    n=${2:?host number}; state=${3:?up|down}
    ip -n "$(ns "$n")" link set "$(veth "$n")" "$state"
    ;;
*)
    echo "usage: netns_hosts.sh up|down|exec N CMD...|link N up|down" >&2
    exit 2
    ;;
esac
