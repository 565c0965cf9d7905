#!/bin/sh
# Run by the DaemonSet's init container (busybox sh): install podswitch-cni
# and its conflist on the host, and write this node's podswitch.toml from
# the ConfigMap's, with NODE_IP (the node's InternalIP, from the downward
# API) and the host interface that has it as the uplink.
set -eu
: "${NODE_IP:?NODE_IP is not set}"
template=/etc/podswitch-template
cp /bin/podswitch-cni /host/opt/cni/bin/.podswitch-cni.new
mv /host/opt/cni/bin/.podswitch-cni.new /host/opt/cni/bin/podswitch-cni
uplink=$(ip -o -4 addr show | awk -v ip="$NODE_IP" '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }')
if [ -z "$uplink" ]; then
    echo "install.sh: no host interface has $NODE_IP" >&2
    exit 1
fi
sed -e "s/@NODE_IP@/$NODE_IP/g" -e "s/@UPLINK@/$uplink/g" \
    "$template/podswitch.toml" > /etc/podswitch/podswitch.toml
cp "$template/10-podswitch.conflist" /host/etc/cni/net.d/.10-podswitch.conflist.new
mv /host/etc/cni/net.d/.10-podswitch.conflist.new /host/etc/cni/net.d/10-podswitch.conflist
echo "install.sh: podswitch-cni and 10-podswitch.conflist installed; uplink $uplink, node_ip $NODE_IP"
