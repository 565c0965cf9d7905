#!/usr/bin/env bash
# Bring the two-node podswitch testbed up (left running) or take it down.
#   scripts/lab.sh up [--encap vxlan|geneve] [--poll-mode adaptive|busy] [--xdp-mode auto|native|generic]
#   scripts/lab.sh down
# Run as root (sudo if you are not): the lab builds network namespaces.
# A failed "up" takes down whatever it had built.
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo puts the binaries (CARGO_TARGET_DIR moves them).
bench="${CARGO_TARGET_DIR:-target}/release/podswitch-bench"
cargo build --release -q -p podswitch -p podswitch-cni -p podswitch-bench
case "${1:-}" in
  up)
    shift
    trap '"$bench" testbed down >/dev/null 2>&1 || true' ERR
    "$bench" testbed up "$@"
    ;;
  down)
    "$bench" testbed down
    ;;
  *)
    echo "usage: $0 up [--encap vxlan|geneve] [--poll-mode adaptive|busy] [--xdp-mode auto|native|generic] | down" >&2
    exit 2
    ;;
esac
