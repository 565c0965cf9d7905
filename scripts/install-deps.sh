#!/usr/bin/env bash
# Install every Debian package podswitch needs to build, test and benchmark.
# Idempotent: packages already present are skipped, and apt runs only when
# something is missing. Run as root on Debian 12 (bookworm) or newer.
#
# Every program the lab, tests and benchmarks run is listed with its
# package in lab/src/tools.rs, and each of those packages is here (a unit
# test there checks it): add a new one to both.
set -euo pipefail

PACKAGES=(
  # lab testbed and traffic
  iproute2 ethtool iputils-ping iperf3 tcpdump tshark netsniff-ng python3-scapy procps psmisc
  # gcc for switch/build.rs, python3 and the shell tools for the tests' and
  # the lab's scripts (dash, coreutils, tar, util-linux, mount and dpkg are
  # on every Debian system; listed so that every program's package is here)
  gcc python3 dash coreutils tar util-linux mount dpkg
  # XDP/BPF programs: clang builds switch/bpf/*.c, libxdp/libbpf load them
  clang llvm libelf-dev zlib1g-dev pkg-config libbpf-dev libxdp-dev m4 make
  # CNI: Debian's reference plugins (host-local IPAM, portmap, bandwidth)
  # to chain and delegate to, and iptables for portmap
  containernetworking-plugins iptables
  # nft: the daemon's Service masquerade table (docs/services.md), and the
  # Services test's kube-proxy nftables-mode rules
  nftables
  # container runtimes the CNI tests drive, and busybox for their image
  podman conmon containerd runc busybox-static curl
  # etcd, the membership tests' datastore (Flannel's layout)
  etcd-server
  # profiling the switch (perf has no hardware counters here)
  valgrind strace
  # the lab benchmark's Open vSwitch contender (userspace datapath, AF_XDP)
  openvswitch-switch
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer for it.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all ${#PACKAGES[@]} packages present"
fi

# cargo-fuzz runs the fuzz targets on the nightly toolchain.
if ! cargo fuzz --help >/dev/null 2>&1; then
  echo "install-deps: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
