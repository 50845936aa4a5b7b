#!/usr/bin/env bash
# Side by side: the same workload through Perl's Cache::FastMmap (benches/compare_perl.pl)
# and through fastmmap (examples/compare_perl.rs), in one run, and a table of ns/op.
#
#   benches/compare_perl.sh             # RUNS=5 OPS=100000 KEYS=10000 by default
#   RUNS=7 OPS=200000 benches/compare_perl.sh
#
# Workload: 10-byte keys, 100-byte values, default geometry (89 pages x 64 KiB), KEYS keys
# stored first; then OPS operations per run of: get with every key present, get with every
# other key absent, and set overwriting a present key. Each half runs on a fresh cache file
# (in /dev/shm when it is writable, else $TMPDIR), warms up with one untimed pass of each
# workload (checking its hit counts), then times RUNS passes, interleaved, and reports the
# best. fastmmap runs three times: with Layout::FastMmap (Cache::FastMmap's own file format,
# hash and fcntl locks: the same work Perl does), with the native layout and fcntl locks, and
# with the native layout and robust shared-memory locks (LockKind::Robust).
#
# Needs perl with Cache::FastMmap (Debian: libcache-fastmmap-perl) and cargo. Honours
# CARGO_TARGET_DIR. Run it on a quiet machine: every figure is a wall-clock time.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

RUNS="${RUNS:-5}"
OPS="${OPS:-100000}"
KEYS="${KEYS:-10000}"

if ! perl -MCache::FastMmap -e1 2>/dev/null; then
    echo "compare_perl.sh: needs perl with Cache::FastMmap (apt-get install libcache-fastmmap-perl)" >&2
    exit 1
fi

echo "building the Rust half (release)..." >&2
cargo build --quiet --release --example compare_perl
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
rust_half="$target_dir/release/examples/compare_perl"
[[ -x "$rust_half" ]] || { echo "compare_perl.sh: $rust_half was not built" >&2; exit 1; }

if [[ -d /dev/shm && -w /dev/shm ]]; then base=/dev/shm; else base="${TMPDIR:-/tmp}"; fi
work="$(mktemp -d "$base/fastmmap-compare.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
load_before="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
args=(--keys "$KEYS" --ops "$OPS" --runs "$RUNS")

echo "running Perl's Cache::FastMmap..." >&2
perl benches/compare_perl.pl --file "$work/perl.cache" "${args[@]}" >"$work/perl.out"
echo "running fastmmap (Layout::FastMmap)..." >&2
"$rust_half" --file "$work/fastmmap.cache" --layout fastmmap "${args[@]}" >"$work/fastmmap.out"
echo "running fastmmap (Layout::Native)..." >&2
"$rust_half" --file "$work/native.cache" --layout native "${args[@]}" >"$work/native.out"
echo "running fastmmap (Layout::Native, LockKind::Robust)..." >&2
"$rust_half" --file "$work/robust.cache" --layout native --lock robust "${args[@]}" >"$work/robust.out"
load_after="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"

# Both halves must have run the same workload on the same geometry.
for half in fastmmap native robust; do
    for what in geometry workload; do
        if ! diff <(grep "^$what " "$work/perl.out") <(grep "^$what " "$work/$half.out") >/dev/null; then
            echo "compare_perl.sh: the Perl and $half halves disagree on the $what:" >&2
            grep "^$what " "$work/perl.out" "$work/$half.out" >&2
            exit 1
        fi
    done
done

read -r _ pages page_size < <(grep '^geometry ' "$work/perl.out")
perl_version="$(perl -MCache::FastMmap -e 'print $Cache::FastMmap::VERSION')"
echo
echo "machine: $(nproc) CPUs, ${cpu:-unknown CPU}, $(uname -sr); load average ${load_before} before, ${load_after} after"
echo "Cache::FastMmap ${perl_version} (perl $(perl -e 'print $^V')), fastmmap $(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)"
echo "workload: ${KEYS} keys of 10 bytes, values of 100 bytes, ${pages} pages x ${page_size} bytes; best of ${RUNS} runs of ${OPS} ops"
echo
awk '
    FNR == 1 { half++ }
    $1 == "result" { ns[half, $2] = $3; if (half == 1) order[++n] = $2 }
    END {
        print "| workload | Perl ns/op | fastmmap, FastMmap layout | ratio | native, fcntl | ratio | native, robust | ratio |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            w = order[i]
            printf "| %s | %d | %d | %.1fx | %d | %.1fx | %d | %.1fx |\n", w, ns[1, w],
                ns[2, w], ns[1, w] / ns[2, w], ns[3, w], ns[1, w] / ns[3, w],
                ns[4, w], ns[1, w] / ns[4, w]
        }
    }
' "$work/perl.out" "$work/fastmmap.out" "$work/native.out" "$work/robust.out"
