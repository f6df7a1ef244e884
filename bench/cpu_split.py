#!/usr/bin/env python3
"""CPU time per platform component between two snapshots, from /proc (Linux).

    cpu_split.py snapshot FILE [WITHIN]   # write the CPU ticks of every process, by component
    cpu_split.py diff BEFORE AFTER COUNT  # CPU seconds per component, and milliseconds per unit of COUNT

A component is `postgres` (the server and every backend), `redis`, `wrk`, or a bookstore process's
role (its first argument: gateway, books, orders, coordinator, registry, up). Processes that exited
between the snapshots are missed; everything measured here is long-lived. With WITHIN (a path, e.g.
the platform's directory), only processes whose command line or an ancestor's contains it count:
`bookstore up --dir WITHIN` and its children, each PostgreSQL postmaster started with `-D WITHIN/…`
and its backends, wrk given files under WITHIN — not another platform's or benchmark's processes
running on the same machine.
"""
import json
import os
import sys

TICKS = os.sysconf("SC_CLK_TCK")


def component(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return None
    if comm == "postgres" or (argv and os.path.basename(argv[0]) == "postgres"):
        return "postgres"
    if comm == "wrk":
        return "wrk"
    if comm.startswith("redis-server"):
        return "redis"
    if argv and os.path.basename(argv[0]).startswith("bookstore") and len(argv) > 1:
        return argv[1]
    return None


def cmdline_and_parent(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            ppid = f.read().rsplit(")", 1)[1].split()[1]
    except OSError:
        return "", "0"
    return cmdline, ppid


def inside(pid, within):
    """Whether pid or one of its ancestors has `within` in its command line."""
    for _ in range(64):
        if pid in ("0", "1"):
            return False
        cmdline, pid = cmdline_and_parent(pid)
        if within in cmdline:
            return True
    return False


def snapshot(within=None):
    ticks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        name = component(pid)
        if name is None or (within and not inside(pid, within)):
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
        used = int(fields[11]) + int(fields[12])
        ticks[f"{name}/{pid}"] = used
    return ticks


def diff(before, after, count):
    per = {}
    for key, used in after.items():
        name = key.split("/")[0]
        per[name] = per.get(name, 0) + used - before.get(key, 0)
    total = sum(per.values())
    print(f"{'component':<12} {'CPU s':>8} {'share':>7} {'ms/unit':>9}")
    for name, used in sorted(per.items(), key=lambda kv: -kv[1]):
        secs = used / TICKS
        print(f"{name:<12} {secs:8.2f} {used / max(total, 1):7.1%} {1000 * secs / max(count, 1):9.3f}")
    print(f"{'total':<12} {total / TICKS:8.2f} {'':>7} {1000 * total / TICKS / max(count, 1):9.3f}")
    return {name: used / TICKS for name, used in per.items()}


if __name__ == "__main__":
    if sys.argv[1] == "snapshot":
        json.dump(snapshot(sys.argv[3] if len(sys.argv) > 3 else None), open(sys.argv[2], "w"))
    elif sys.argv[1] == "diff":
        result = diff(json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), int(sys.argv[4]))
        if len(sys.argv) > 5:
            json.dump(result, open(sys.argv[5], "w"), indent=2)
    else:
        sys.exit(__doc__)
