#!/bin/sh
# Builds weft-sidecar as it ships: the dist profile (fat LTO, one codegen
# unit), optimised twice from profiles of weft-bench's workload: by LLVM
# when compiling (PGO), then by BOLT on the linked binary (code layout).
# docs/performance.md ("Profile-guided optimisation", "BOLT") has what each
# buys and why the flags below.
#
#   deploy/pgo.sh [OUT]        (OUT defaults to target/pgo/weft-sidecar)
#
# 1. Builds an instrumented dist sidecar (target/pgo/gen).
# 2. Runs weft-bench once through it, every path: plaintext, mTLS with
#    resilience, mTLS bare, traced at 100% and 1%, 100 route rules, the
#    gateway over gRPC and HTTP/1.1, HTTP/1.1 REST, gRPC as opaque TCP;
#    unary calls measured, and in the warm-up streaming calls of each kind
#    and a raw TCP echo. Each sidecar writes its counts when it exits on
#    weft-bench's SIGTERM.
# 3. Merges the counts with llvm-profdata, which must come from rustc's own
#    LLVM version: $LLVM_PROFDATA, else rustup's llvm-tools component, else
#    Debian's llvm-N package (N = rustc's LLVM major version).
# 4. Builds the sidecar again with the merged profile (target/pgo/use),
#    keeping the link's relocations for BOLT.
# 5. BOLT: instruments that binary, runs weft-bench through it again, and
#    lays the binary out by the counts (llvm-bolt from $LLVM_BOLT, else
#    Debian's bolt-N package, any version).
set -eu
cd "$(dirname "$0")/.."
out=${1:-target/pgo/weft-sidecar}
here=$(pwd)
if [ -d "$out" ]; then
    echo "pgo.sh: $out is a directory; name the binary to write (e.g. $out/weft-sidecar)" >&2
    exit 1
fi

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
# BOLT reads the linked binary, so any version will do; the newest wins.
bolt=${LLVM_BOLT:-$(ls -v /usr/lib/llvm-*/bin/llvm-bolt 2>/dev/null | tail -1)}
if [ -z "$bolt" ] || [ ! -x "$bolt" ]; then
    echo "pgo.sh: llvm-bolt is missing: apt-get install bolt-$llvm, or set LLVM_BOLT" >&2
    exit 1
fi
merge_fdata=$(dirname "$bolt")/merge-fdata

data=$here/target/pgo/data
rm -rf "$data"
mkdir -p "$data"

# --target keeps RUSTFLAGS off build scripts and proc macros, which run
# here and are not shipped.
CARGO_TARGET_DIR=target/pgo/gen RUSTFLAGS="-Cprofile-generate=$data" \
    cargo build --locked --profile dist -p weft-sidecar --bin weft-sidecar --target "$host"

# weft-bench and what it starts (the control plane, the backends).
cargo build --locked --release --workspace --bins
# train LOG NAME=VALUE...: one weft-bench run, every path, in that
# environment (WEFT_SIDECAR_BIN names the sidecar it runs). Each path runs
# its 3 s in one go and at one count in flight: the workload every shipped
# profile was trained on, kept when weft-bench's defaults changed.
train() {
    log=$1
    shift
    echo "pgo.sh: training run (weft-bench, about 100 s; log in $log)"
    env "$@" target/release/weft-bench --seconds 3 --turn 3 --rounds 1 --payload 64 --concurrency 64 >"$log" 2>&1 ||
        {
            tail -20 "$log" >&2
            echo "pgo.sh: the training run failed (log above)" >&2
            exit 1
        }
}
train target/pgo/training.log LLVM_PROFILE_FILE="$data/sidecar-%p.profraw" \
    WEFT_SIDECAR_BIN="target/pgo/gen/$host/dist/weft-sidecar"
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
# emit-relocs: BOLT moves functions, so it needs every reference the
# linker resolved. (Not -z pack-relative-relocs: BOLT 22 corrupts the
# dynamic section of a binary with DT_RELR.)
CARGO_TARGET_DIR=target/pgo/use RUSTFLAGS="-Cprofile-use=$here/target/pgo/weft.profdata \
-Cllvm-args=-pgso=false -Clink-arg=-Wl,-z,keep-text-section-prefix \
-Clink-arg=-Wl,--emit-relocs" \
    cargo build --locked --profile dist -p weft-sidecar --bin weft-sidecar --target "$host"
pgo_bin=target/pgo/use/$host/dist/weft-sidecar

# BOLT, trained the same way: each sidecar writes its counts on exit.
bdata=$here/target/pgo/bolt
rm -rf "$bdata"
mkdir -p "$bdata"
"$bolt" "$pgo_bin" -o "$bdata/weft-sidecar.inst" -instrument \
    --instrumentation-file="$bdata/sidecar.fdata" --instrumentation-file-append-pid \
    >"$bdata/instrument.log" 2>&1 || {
    tail -20 "$bdata/instrument.log" >&2
    echo "pgo.sh: llvm-bolt could not instrument $pgo_bin (log above)" >&2
    exit 1
}
train target/pgo/training-bolt.log WEFT_SIDECAR_BIN="$bdata/weft-sidecar.inst"
if ! ls "$bdata"/sidecar.fdata.* >/dev/null 2>&1; then
    echo "pgo.sh: the BOLT training run left no profile in $bdata" >&2
    exit 1
fi
"$merge_fdata" "$bdata"/sidecar.fdata.* >"$bdata/merged.fdata" 2>"$bdata/merge.log" || {
    cat "$bdata/merge.log" >&2
    echo "pgo.sh: $merge_fdata could not merge the BOLT profiles (above)" >&2
    exit 1
}
# The hot code goes together, in call order (cdsort), each function's hot
# blocks first (ext-tsp) and its cold ones split off to .text.cold; code
# the training never ran stays where the linker put it. (Not
# -use-gnu-stack: it turns the GNU_STACK program header into the new
# code's, and without that header glibc makes every thread's stack
# executable.)
mkdir -p "$(dirname "$out")"
"$bolt" "$pgo_bin" -o "$out.tmp" -data="$bdata/merged.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions \
    -split-all-cold -split-eh -icf=1 -update-debug-sections \
    >"$bdata/optimise.log" 2>&1 || {
    tail -20 "$bdata/optimise.log" >&2
    echo "pgo.sh: llvm-bolt could not optimise $pgo_bin (log above)" >&2
    exit 1
}
# The stack must stay not executable: GNU_STACK present, flags RW.
stack=$(readelf -lW "$out.tmp" | awk '$1 == "GNU_STACK" { print $7 }')
if [ "$stack" != "RW" ]; then
    echo "pgo.sh: $out.tmp would run with executable stacks" \
        "(GNU_STACK program header: ${stack:-missing}, expected RW)" >&2
    exit 1
fi
mv -f "$out.tmp" "$out"
echo "pgo.sh: $out"
