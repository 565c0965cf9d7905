#!/usr/bin/env bash
# The main job: install what is needed, build, and run the demo.
# Run as root: it builds network namespaces.
#
# Today the demo holds podswitch's wire formats to the kernel's own VXLAN:
# frames the kernel encapsulates are decapsulated by podswitch-encap and
# frames podswitch-encap encapsulates are delivered by the kernel (IPv4 and
# IPv6 underlays), Geneve frames are read back by Wireshark's dissector,
# and the per-frame costs are measured.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --workspace --all-targets

echo
echo "== kernel VXLAN interop and tshark dissection"
cargo test --release -p podswitch-encap --test kernel_interop --test tshark_dissector 2>&1 |
  grep -E '^test |test result'

echo
echo "== per-frame cost (criterion, short run)"
cargo bench -p podswitch-bench --bench encap -- --warm-up-time 1 --measurement-time 2 'frame/' 2>&1 |
  awk '/^(encap|decap|flow)/ {name=$1} /time:/ && name {print "  " name ": " $4 " " $5; name=""}'
