#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time; fail on the first crash.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60; 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if [[ "$seconds" == 0 ]]; then
  echo "fuzz: skipped (0 seconds)"
  exit 0
fi

# One target directory for the four fuzz crates, so the dependencies they
# share (podswitch-encap, -control, serde...) are built once.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
# No sanitizer by default: the fuzzed code is safe Rust (no `unsafe` in
# encap, control, the CNI plugin or the config parser), so AddressSanitizer
# finds nothing there while slowing build and run; panics, overflows
# and debug assertions are caught either way. FUZZ_SANITIZER=address turns
# it back on.
build_flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --target-dir "$target_dir")

for crate in encap control switch cni; do
  (
    cd "$crate"
    cargo +nightly fuzz build "${build_flags[@]}"
    for target in $(cargo +nightly fuzz list); do
      echo "fuzz: $crate/$target for ${seconds}s"
      # -timeout: a single input taking over 10 s is a hang, and a failure.
      set +e
      cargo +nightly fuzz run "${build_flags[@]}" "$target" -- -max_total_time="$seconds" -timeout=10 2>&1 |
        grep -E '^(Done|==[0-9]+==|SUMMARY|artifact_prefix|Test unit)'
      status="${PIPESTATUS[0]}"
      set -e
      if [[ "$status" != 0 ]]; then
        echo "fuzz: $crate/$target found a crash: see $crate/fuzz/artifacts/$target/" >&2
        exit 1
      fi
    done
  )
done
