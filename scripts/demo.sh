#!/usr/bin/env bash
# The main job: install what is needed, build, and run the two-node demo —
# podswitch on two node namespaces joined by a veth underlay, two pods on
# each, ping and iperf3 across the VXLAN overlay, and a summary of what
# happened and what it measured. Run as root. Extra arguments go to
# `podswitch-bench demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo puts the binaries (CARGO_TARGET_DIR moves them).
bench="${CARGO_TARGET_DIR:-target}/release/podswitch-bench"

scripts/install-deps.sh
cargo build --release -p podswitch -p podswitch-cni -p podswitch-bench

# The demo removes its namespaces itself, on failure and Ctrl-C too; this
# catches anything left if it is killed outright. Its namespaces are named
# after its PID (`ps-demo-<pid>-…`, or $PODSWITCH_LAB_PREFIX instead of
# `ps`), so another demo's are left alone.
pid_file="$(mktemp)"
cleanup() {
  local pid
  pid="$(cat "$pid_file" 2>/dev/null || true)"
  rm -f "$pid_file"
  [ -n "$pid" ] || return 0
  ip netns list | awk -v prefix="${PODSWITCH_LAB_PREFIX:-ps}-demo-$pid-" \
    'index($1, prefix) == 1 {print $1}' | xargs -r -n1 ip netns del 2>/dev/null || true
}
trap cleanup EXIT

# The subshell writes its PID, then becomes the demo: the same process.
( echo "$BASHPID" > "$pid_file"; exec "$bench" demo "$@" )
