#!/usr/bin/env bash
# The whole podswitch test suite — what CI runs (.ci/run calls this).
# Run as root: the lab tests build network namespaces.
#   FUZZ_SECONDS=N   seconds per fuzz target (default 60; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo puts the binaries (CARGO_TARGET_DIR moves them).
bench="${CARGO_TARGET_DIR:-target}/release/podswitch-bench"

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
scripts/install-deps.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "unit, property, kernel-interop, tshark and lab tests"
cargo test --workspace --release

step "lab benchmark, quick (every contender kind and measurement, briefly)"
cargo build --release --workspace
"$bench" lab --quick --out "${CARGO_TARGET_DIR:-target}/lab-quick"

step "criterion benchmarks compile and run once"
cargo bench -p podswitch-bench -- --test

step "fuzzing"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"

step "all tests passed"
