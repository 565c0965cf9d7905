#!/usr/bin/env bash
# The whole podswitch test suite — what CI runs (.ci/run calls this).
# Run as root: the lab tests build network namespaces.
#   FUZZ_SECONDS=N   seconds per fuzz target (default 60; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite builds with the `ci` profile (Cargo.toml: release code that
# compiles faster) into target/ci/ (CARGO_TARGET_DIR moves it).
bench="${CARGO_TARGET_DIR:-target}/ci/podswitch-bench"

step() { printf '\n==> %s\n' "$*"; }

step "system packages"
scripts/install-deps.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

# --all-targets also builds the binaries once with the tests' features and
# runs each criterion benchmark once, as a test (no second build for them).
step "unit, property, kernel-interop, tshark and lab tests; criterion benchmarks once"
cargo test --workspace --profile ci --all-targets
cargo test --workspace --profile ci --doc

step "lab benchmark, quick (every contender kind and measurement, briefly)"
"$bench" lab --quick --out "${CARGO_TARGET_DIR:-target}/ci/lab-quick"

step "fuzzing"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"

step "all tests passed"
