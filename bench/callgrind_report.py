#!/usr/bin/env python3
"""Instructions per request from a callgrind dump, by function, inlined code folded in.

callgrind_annotate splits a function's cost by the source file of the code inlined into it; this
adds it up by function name, so each layer of the gateway shows its inclusive cost once.

  callgrind_report.py DUMP REQUESTS                     the gateway's and platform's own frames
  callgrind_report.py DUMP REQUESTS --match PATTERN [--depth N]
                                                        those functions and what they call
  callgrind_report.py table PATH RESULTS_JSON           stdin's "name requests Ir=n,D1mr=n,..."
                                                        lines as a table per request
"""
import argparse
import collections
import json
import re
import sys

OWN = re.compile(r"gateway::|platform::|tower_http::|axum::routing::Router|hyper_util::client::legacy::client::ResponseFuture")


def parse(path):
    """Self cost and per-callee inclusive cost of every function in a callgrind out file."""
    names, self_cost = {}, collections.Counter()
    calls = collections.defaultdict(collections.Counter)
    counts = collections.defaultdict(collections.Counter)

    def name_of(token):
        m = re.match(r"\((\d+)\)(?: (.*))?", token)
        if not m:
            return token
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names[m.group(1)]

    fn = callee = pending = None
    pending_calls = 0
    with open(path) as dump:
        for line in dump:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                fn = name_of(line[3:])
            elif line.startswith("cfn="):
                callee = name_of(line[4:])
            elif line.startswith("calls="):
                pending, pending_calls = callee, int(line[6:].split()[0])
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) < 2 or not parts[1].isdigit():
                    continue
                if pending is not None:
                    calls[fn][pending] += int(parts[1])
                    counts[fn][pending] += pending_calls
                    pending = None
                else:
                    self_cost[fn] += int(parts[1])
    inclusive = collections.Counter()
    for f in set(self_cost) | set(calls):
        inclusive[f] = self_cost[f] + sum(v for c, v in calls[f].items() if c != f)
    return self_cost, inclusive, calls, counts


def short(name):
    return re.sub(r"\s+", " ", name)[:150]


def table(path, results):
    """One row per target: each event per request, and as a ratio to the first target's."""
    rows = []
    for line in sys.stdin:
        if line.strip():
            name, requests, events = line.split()
            counts = {k: int(v) for k, v in (e.split("=") for e in events.split(","))}
            rows.append((name, int(requests), {k: v / int(requests) for k, v in counts.items()}))
    first, base = rows[0][2], "x" + rows[0][0]
    print(f"GET {path}; per request (user space, every thread), callgrind")
    print("target".ljust(10), "requests".rjust(9), *(f"{e:>9} {base:>9}" for e in first))
    for name, requests, per in rows:
        cells = (f"{per[e]:>9.0f} {per[e] / first[e] if first[e] else 0:>9.3f}" for e in first)
        print(name.ljust(10), f"{requests:>9}", *cells)
    with open(results, "w") as out:
        json.dump({"path": path, "per_request": {n: p for n, _, p in rows},
                   "requests": {n: r for n, r, _ in rows}}, out, indent=1)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("requests", type=float)
    ap.add_argument("--match")
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--top", type=int, default=45)
    a = ap.parse_args()
    self_cost, inclusive, calls, counts = parse(a.dump)
    n = a.requests
    if not a.match:
        print(f"{'incl':>7} {'self':>6}  instructions per request (inclusive, self), own frames")
        own = [f for f, _ in inclusive.most_common() if OWN.search(f)]
        for f in own[: a.top]:
            print(f"{inclusive[f] / n:7.0f} {self_cost[f] / n:6.0f}  {short(f)}")
        return

    def show(f, depth, indent):
        print(f"{'  ' * indent}{inclusive[f] / n:7.0f} incl {self_cost[f] / n:6.0f} self  {short(f)}")
        for c, v in calls[f].most_common(14):
            if c == f or v / n < 40 or depth == 0:
                continue
            if depth > 1:
                show(c, depth - 1, indent + 1)
            else:
                print(f"{'  ' * (indent + 1)}{v / n:7.0f}  ({counts[f][c] / n:.2f}/req) {short(c)}")

    for f in sorted((f for f in inclusive if a.match in f), key=lambda f: -inclusive[f])[:3]:
        show(f, a.depth, 0)
        print()


if __name__ == "__main__":
    main()
