#!/bin/sh
# Builds weft-sidecar as it ships: the dist profile (fat LTO, one codegen
# unit) plus profile-guided optimisation (PGO), trained on weft-bench's
# workload. docs/performance.md ("Profile-guided optimisation") has what it
# buys and why the flags below.
#
#   deploy/pgo.sh [OUT]        (OUT defaults to target/pgo/weft-sidecar)
#
# 1. Builds an instrumented dist sidecar (target/pgo/gen).
# 2. Runs weft-bench once through it, every path: plaintext, mTLS with
#    resilience, mTLS bare, traced at 100% and 1%, 100 route rules, the
#    gateway over gRPC and HTTP/1.1, HTTP/1.1 REST; unary calls measured,
#    and streaming calls of each kind in the warm-up. Each sidecar writes
#    its counts when it exits on weft-bench's SIGTERM.
# 3. Merges the counts with llvm-profdata, which must come from rustc's own
#    LLVM version: $LLVM_PROFDATA, else rustup's llvm-tools component, else
#    Debian's llvm-N package (N = rustc's LLVM major version).
# 4. Builds the sidecar again with the merged profile (target/pgo/use).
set -eu
cd "$(dirname "$0")/.."
out=${1:-target/pgo/weft-sidecar}
here=$(pwd)

host=$(rustc -vV | sed -n 's/^host: //p')
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=${LLVM_PROFDATA:-}
if [ -z "$profdata" ]; then
    for p in "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" \
        "/usr/lib/llvm-$llvm/bin/llvm-profdata"; do
        if [ -x "$p" ]; then
            profdata=$p
            break
        fi
    done
fi
if [ -z "$profdata" ] || [ ! -x "$profdata" ]; then
    echo "pgo.sh: llvm-profdata for LLVM $llvm (rustc's) is missing:" \
        "rustup component add llvm-tools, or apt-get install llvm-$llvm," \
        "or set LLVM_PROFDATA" >&2
    exit 1
fi

data=$here/target/pgo/data
rm -rf "$data"
mkdir -p "$data"

# --target keeps RUSTFLAGS off build scripts and proc macros, which run
# here and are not shipped.
CARGO_TARGET_DIR=target/pgo/gen RUSTFLAGS="-Cprofile-generate=$data" \
    cargo build --locked --profile dist -p weft-sidecar --bin weft-sidecar --target "$host"

# weft-bench and what it starts (the control plane, the backends).
cargo build --locked --release --workspace --bins
echo "pgo.sh: training run (weft-bench, about 90 s; log in target/pgo/training.log)"
LLVM_PROFILE_FILE="$data/sidecar-%p.profraw" \
    WEFT_SIDECAR_BIN=target/pgo/gen/$host/dist/weft-sidecar \
    target/release/weft-bench --seconds 3 --rounds 1 --payload 64 >target/pgo/training.log 2>&1 ||
    {
        tail -20 target/pgo/training.log >&2
        echo "pgo.sh: the training run failed (log above)" >&2
        exit 1
    }
if ! ls "$data"/*.profraw >/dev/null 2>&1; then
    echo "pgo.sh: the training run left no profile in $data" >&2
    exit 1
fi
"$profdata" merge -o target/pgo/weft.profdata "$data"/*.profraw

# -pgso=false: code the training never ran (streaming, opaque TCP, error
# paths) is still optimised for speed, not size; PGO only moves it out of
# the way. keep-text-section-prefix: LLVM marks functions hot or unlikely
# from the profile, and the linker keeps each kind together, so the code a
# running sidecar never touches is not paged in around the code it does.
# pack-relative-relocs: DT_RELR (glibc 2.36+) instead of 340 KB of RELA
# relocations the loader reads at every start.
CARGO_TARGET_DIR=target/pgo/use RUSTFLAGS="-Cprofile-use=$here/target/pgo/weft.profdata \
-Cllvm-args=-pgso=false -Clink-arg=-Wl,-z,keep-text-section-prefix \
-Clink-arg=-Wl,-z,pack-relative-relocs" \
    cargo build --locked --profile dist -p weft-sidecar --bin weft-sidecar --target "$host"
mkdir -p "$(dirname "$out")"
cp --remove-destination "target/pgo/use/$host/dist/weft-sidecar" "$out"
echo "pgo.sh: $out"
