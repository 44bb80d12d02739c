#!/bin/sh
# The Linux side of examples/vxlan/topology.toml: a network namespace
# (shmnet-vxpeer) joined to this host by a veth pair (this host's end
# 10.78.0.2, the namespace's 10.78.0.1) with a kernel VXLAN interface
# (VNI 4242, UDP 4789, remote 10.78.0.2) holding 10.79.0.1/24.
#
#   sudo examples/vxlan/linux-peer.sh up|down
set -eu
NS=shmnet-vxpeer
case "${1:-}" in
up)
    ip netns add "$NS"
    ip link add shmvx-host type veth peer name shmvx-peer
    ip link set shmvx-peer netns "$NS"
    ip addr add 10.78.0.2/24 dev shmvx-host
    ip link set shmvx-host up
    ip -n "$NS" link set lo up
    ip -n "$NS" addr add 10.78.0.1/24 dev shmvx-peer
    ip -n "$NS" link set shmvx-peer up
    ip -n "$NS" link add vxlan4242 type vxlan id 4242 local 10.78.0.1 \
        remote 10.78.0.2 dstport 4789 dev shmvx-peer
    ip -n "$NS" addr add 10.79.0.1/24 dev vxlan4242
    ip -n "$NS" link set vxlan4242 up
    echo "up: try  ip netns exec $NS ping -c 3 10.79.0.2"
    ;;
down)
    # The namespace takes its end of the veth pair, and so ours, with it.
    ip netns del "$NS" 2>/dev/null || true
    ip link del shmvx-host 2>/dev/null || true
    echo down
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
