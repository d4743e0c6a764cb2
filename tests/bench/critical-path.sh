#!/bin/sh
# The critical path of a unary call through each proxy pair, hop by hop, on
# the core the pair shares with its backend (weft-bench --pin): for every
# path, `perf` records that core's context switches and read/write system
# calls for 1.5 s of the 1000 rps round, and critical_path.py prints how
# long each hop worked before it wrote, and the write itself.
# docs/performance.md ("The critical path, hop by hop") reads the result.
#
#   tests/bench/critical-path.sh [PATH|PATH...]
#
# PATHs are weft-bench's names (default 'mTLS pair|mTLS bare|bare TCP
# relays'). Needs root, perf (Debian's linux-perf) and python3; the release
# binaries built; WEFT_SIDECAR_BIN names the sidecar (default: the PGO build
# if there is one, else the release build). perf runs on CPU 0, with the
# load generator, so that it does not take the measured core's time.
# ENVOY names an Envoy binary, for the path 'Envoy mTLS pair' (peers.sh
# installs one in target/bench-venv).
set -eu
cd "$(dirname "$0")/../.."
paths=${1:-mTLS pair|mTLS bare|bare TCP relays}
if [ -z "${WEFT_SIDECAR_BIN:-}" ]; then
    WEFT_SIDECAR_BIN=target/release/weft-sidecar
    [ -x target/pgo/weft-sidecar ] && WEFT_SIDECAR_BIN=target/pgo/weft-sidecar
fi
command -v perf >/dev/null || { echo "critical-path.sh: needs perf (apt install linux-perf)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "sidecar: $WEFT_SIDECAR_BIN; records in $out" >&2
WEFT_SIDECAR_BIN=$WEFT_SIDECAR_BIN target/release/weft-bench --pin ${ENVOY:+--envoy "$ENVOY"} \
    --only "direct|$paths" --seconds 6 --turn 6 --rounds 1 --payload 64 \
    >"$out/bench.out" 2>"$out/bench.err" &
bench=$!
# write, writev, sendto, sendmsg; read, recvfrom; epoll_wait, epoll_pwait
syscalls="id == 1 || id == 20 || id == 44 || id == 46 || id == 0 || id == 45 || id == 232 || id == 281"
args=""
echo "$paths" | tr '|' '\n' >"$out/paths"
while read -r name; do
    file=$out/$(echo "$name" | tr ' %' '__').txt
    until grep -q "round 1: $name at" "$out/bench.err" 2>/dev/null; do
        kill -0 "$bench" 2>/dev/null || { cat "$out/bench.err" >&2; exit 1; }
        sleep 0.05
    done
    # 1.5 s into the round, past the connections' first calls.
    sleep 1.5
    taskset -c 0 perf record -q -o "$out/perf.data" -C 1 -e sched:sched_switch \
        -e raw_syscalls:sys_enter --filter "$syscalls" \
        -e raw_syscalls:sys_exit --filter "$syscalls" -- sleep 1.5 >/dev/null 2>&1
    perf script -i "$out/perf.data" -F comm,pid,tid,cpu,time,event,trace >"$file" 2>/dev/null
    args="$args|$name=$file"
done <"$out/paths"
wait "$bench"
sed -n '/^| pair | added/,/^$/p' "$out/bench.out" >&2
# The paths' labels hold spaces: hand them over one per line.
echo "${args#|}" | tr '|' '\n' | python3 tests/bench/critical_path.py
