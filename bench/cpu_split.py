#!/usr/bin/env python3
"""CPU time per platform component between two snapshots, from /proc (Linux).

    cpu_split.py snapshot FILE [ROOT...]  # write the CPU ticks of every process, by component
                                          # (with ROOTs — pids, or directories — only descendants
                                          # of those pids or of a process working in those
                                          # directories, e.g. a postmaster in its data directory:
                                          # another platform on the same machine is not counted)
    cpu_split.py diff BEFORE AFTER COUNT  # CPU seconds per component, and milliseconds per unit of COUNT

A component is `postgres` (the server and every backend), `redis`, `wrk`, or a bookstore process's
role (its first argument: gateway, books, orders, coordinator, registry, up). Processes that exited
between the snapshots are missed; everything measured here is long-lived.
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


def parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]
    except OSError:
        return "0"


def cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def descends(pid, roots):
    pids = {r for r in roots if r.isdigit()}
    dirs = [os.path.realpath(r) + "/" for r in roots if not r.isdigit()]
    seen = 0
    while pid not in ("0", "1") and seen < 64:
        if pid in pids or (dirs and any((cwd(pid) + "/").startswith(d) for d in dirs)):
            return True
        pid, seen = parent(pid), seen + 1
    return False


def snapshot(roots=()):
    ticks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        name = component(pid)
        if name is None or (roots and not descends(pid, set(roots))):
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
        json.dump(snapshot(sys.argv[3:]), open(sys.argv[2], "w"))
    elif sys.argv[1] == "diff":
        result = diff(json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), int(sys.argv[4]))
        if len(sys.argv) > 5:
            json.dump(result, open(sys.argv[5], "w"), indent=2)
    else:
        sys.exit(__doc__)
