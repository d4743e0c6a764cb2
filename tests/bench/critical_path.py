"""Critical path of unary calls on the proxies' core, from `perf script`.

Reads the output of `perf record -C CPU -e sched:sched_switch -e
raw_syscalls:sys_enter -e raw_syscalls:sys_exit` taken while calls went
one at a time through a pair of proxies whose backend shares that core.
Each call begins with the first event on the core after it was idle (the
client side's return from epoll_wait, when recorded) and makes five writes in turn:
client side to server side, server side to the backend, backend back, server
side back, client side to the caller. For each hop it prints the median
time from the previous write's return to this write's start (reading,
the proxy's own work, and the switch to it), the median write syscall,
and their sum over the call.

    critical_path.py LABEL=PERF_SCRIPT_OUTPUT...   (or one per line on stdin)

tests/bench/critical-path.sh records and runs it.
"""
import re
import sys

WRITES = {1, 20, 44, 46}  # write, writev, sendto, sendmsg
HOPS = [
    "client side: caller -> peer",
    "server side: peer -> backend",
    "backend",
    "server side: backend -> peer",
    "client side: peer -> caller",
]
LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")


def calls(path, cpu):
    """Yields each call's five (start of work, write enter, write exit, tid)."""
    chain, start, pending, last_exit = None, None, None, None
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m or int(m.group(4)) != cpu:
            continue
        _, _, tid, _, ts, ev, rest = m.groups()
        t = float(ts) * 1e6
        if ev.startswith("sched:sched_switch"):
            # The core goes idle: the call (if any) has ended, and the next
            # event on the core is the next call's first.
            if "next_comm=swapper" in rest:
                if chain is not None and len(chain) == 5:
                    yield chain
                chain, last_exit, pending = [], None, None
            continue
        if chain is None:
            continue
        if last_exit is None:
            last_exit = t
        elif ev.startswith("raw_syscalls:sys_enter"):
            nr = int(re.search(r"NR (-?\d+)", rest).group(1))
            if nr in WRITES:
                pending = (last_exit, t, int(tid))
        elif ev.startswith("raw_syscalls:sys_exit") and pending is not None:
            nr = int(re.search(r"NR (-?\d+)", rest).group(1))
            if nr in WRITES and int(tid) == pending[2]:
                chain.append((pending[0], pending[1], t, pending[2]))
                last_exit, pending = t, None


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if v else float("nan")


def main():
    cpu = 1
    rows = {}
    for arg in sys.argv[1:] or [l.strip() for l in sys.stdin if l.strip()]:
        label, path = arg.split("=", 1)
        got = [c for c in calls(path, cpu) if c[0][3] != c[1][3]]
        work = [[c[i][1] - c[i][0] for c in got] for i in range(5)]
        write = [[c[i][2] - c[i][1] for c in got] for i in range(5)]
        total = [c[4][1] - c[0][0] for c in got]
        rows[label] = (len(got), work, write, total)
    labels = list(rows)
    print("| hop (medians, µs: work before the write + the write) | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for i, hop in enumerate(HOPS):
        cells = [f"{median(r[1][i]):.0f} + {median(r[2][i]):.0f}" for r in rows.values()]
        print(f"| {hop} | " + " | ".join(cells) + " |")
    print("| whole call on the core, to the last write | " + " | ".join(f"{median(r[3]):.0f}" for r in rows.values()) + " |")
    proxies = lambda r: median([sum(r[1][i][k] for i in (0, 1, 3, 4)) for k in range(r[0])])
    print("| the proxies' four hops, before their writes | " + " | ".join(f"{proxies(r):.0f}" for r in rows.values()) + " |")
    print("| calls in the sample | " + " | ".join(str(r[0]) for r in rows.values()) + " |")


main()
