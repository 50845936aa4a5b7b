#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for a bounded time; exits non-zero on any crash,
# model violation or build failure. Run from anywhere in a checkout (CI: from the repo root):
#
#   fuzz/smoke.sh                  # 30 s per target
#   FUZZ_SECONDS=300 fuzz/smoke.sh # longer
#
# Only a stable toolchain is needed: cargo-fuzz's `-Z` flags are accepted under
# RUSTC_BOOTSTRAP=1. cargo-fuzz is installed with `cargo install` when missing.
# Each target first replays its saved inputs in fuzz/regressions/<target>/ and its seed
# inputs in fuzz/seeds/<target>/ (if any), and then its corpus in fuzz/corpus/<target>/ (kept
# between runs, ignored by git).
#
# The targets exercise the page layer and the Perl value codecs, which are safe Rust, and the
# overflow area (whose unsafe reads check every block number against the area first), so
# they are built without a sanitizer (`--sanitizer none`: twice the executions of AddressSanitizer); debug assertions,
# hence integer overflow checks, stay on. `overflow_bytes` also deserves a run under
# AddressSanitizer now and then (fuzz/README.md).

set -euo pipefail

seconds="${FUZZ_SECONDS:-30}"
targets=(page_bytes page_model overflow_bytes storable)

cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Cargo caches rustc's answers per target directory without regard to RUSTC_BOOTSTRAP: a
# `cargo fuzz build` once run without it leaves a cached "-Z is nightly only" failure behind.
rm -f fuzz/target/.rustc_info.json

start=$(date +%s)
cargo fuzz build --sanitizer none
echo "smoke: built in $(($(date +%s) - start)) s" >&2

failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/regressions/$t"
    echo "smoke: fuzzing $t for ${seconds} s" >&2
    # The first directory receives new inputs; the others only seed the run. A failing
    # input is written to fuzz/artifacts/$t/.
    seeds=()
    if [[ -d "fuzz/seeds/$t" ]]; then
        seeds=("fuzz/seeds/$t")
    fi
    if ! cargo fuzz run --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/regressions/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1; then
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "smoke: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "smoke: all targets ran ${seconds} s without a failure ($(($(date +%s) - start)) s)" >&2
