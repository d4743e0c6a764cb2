#!/bin/sh
# Instructions per call in a pair of sidecars, counted rather than timed:
# weft-allocs runs under valgrind's callgrind, and the sidecars' thread's
# instruction count is divided by the calls it carried. On a shared
# machine, where CPU time per call moves by ±20% between runs, the count
# moves by about 0.5%: it shows a change of a few percent that timings
# cannot. It counts work, not cache misses or system calls; the timed
# benchmarks (weft-bench, weft-allocs) stay the measure of speed.
# docs/performance.md ("Instructions per call") reads it.
#
#   tests/bench/instructions.sh [WEFT_ALLOCS_BINARY] [CALLS] [ONLY]
#
# Defaults: target/release/weft-allocs, 4000 calls per path (5 paths, 32
# in flight; each path also makes 500 warm-up calls), every path. ONLY
# counts the paths whose names contain it (weft-allocs --only): `bare`,
# `resilience`, `one try` (the bare mTLS pair traced, nothing sampled),
# `traced` (that and the traced plaintext pair). Needs valgrind (Debian's
# valgrind). About three minutes for all five paths.
set -eu
cd "$(dirname "$0")/../.."
bin=${1:-target/release/weft-allocs}
calls=${2:-4000}
only=${3:-}
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind (apt install valgrind)" >&2; exit 1; }
[ -x "$bin" ] || { echo "instructions.sh: no $bin (cargo build --release -p weft-tests --bin weft-allocs)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --separate-threads=yes --dump-instr=no \
    --callgrind-out-file="$out/cg.%p" "$bin" --concurrency 32 --calls "$calls" ${only:+--only "$only"} \
    >"$out/allocs.out" 2>"$out/valgrind.err" || { cat "$out/valgrind.err" >&2; exit 1; }
# The paths counted: weft-allocs' table rows (not its header or rule).
paths=$(grep '^| ' "$out/allocs.out" | grep -vc '^| path (' || true)
# The sidecars run on one thread of their own, the busiest by far (the
# client and the backend each run about a third as many instructions).
busiest=$(for f in "$out"/cg.*-*; do
    echo "$(sed -n 's/^summary: //p' "$f") $f"
done | sort -n | tail -n 1)
total=${busiest%% *}
file=${busiest#* }
per_path=$(( calls / 32 * 32 + 500 ))
echo "sidecars' thread: $total instructions over $paths paths × $per_path calls"
echo "instructions per call, both sidecars, the paths' mean: $(( total / (paths * per_path) ))"
echo
echo "Top functions (self), share of the thread:"
callgrind_annotate --auto=no --threshold=100 "$file" 2>/dev/null |
    sed -n '/^Ir/,$p' | sed -n '3,22p' |
    sed 's#/root/.cargo/registry/src/[^/]*/##; s#/rustc/[0-9a-f]*/##' | cut -c1-160
