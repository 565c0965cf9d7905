#!/usr/bin/env bash
# The soak (not part of the test suite): mixed traffic through a two-node
# lab for a bounded time, each daemon's memory, fds and buffer frames
# sampled every 10 s; fails if they grow over the second half or traffic
# stops. Run as root. Usage: scripts/soak.sh [SECONDS]   (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS="${1:-600}" cargo test --release -p podswitch --test soak -- --ignored --nocapture
