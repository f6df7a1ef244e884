#!/usr/bin/env python3
"""Counts the round trips PostgreSQL served per checkout, by database, from an strace of the
platform's postmasters and backends (`strace -f -e trace=recvfrom`, bench/checkout.sh runs it during
the sequential checkouts it logs statements for).

    round_trips.py CHECKOUTS STRACE_FILE BACKENDS_FILE

BACKENDS_FILE holds `pid|datname` lines (from pg_stat_activity) naming each backend's database.
A backend reads each message batch a client flushes with one successful `recvfrom`: a statement
(a simple-protocol batch, or Parse/Bind/Execute/Sync), a transaction's `BEGIN`/`COMMIT`, and also
what runs no statement and is not in the statement log — sqlx's connection check before an acquire
and after a release (a bare Sync). Reads that found nothing (EAGAIN) are not counted. A backend
started during the trace that is gone by its end (a short-lived connection) is counted apart.
"""
import collections
import re
import sys

checkouts = max(int(sys.argv[1]), 1)
database = {}
for line in open(sys.argv[3]):
    parts = line.strip().split("|")
    if len(parts) == 2 and parts[0].isdigit():
        database[parts[0]] = parts[1]
read = re.compile(r"^(\d+)\s+recvfrom\(.*\)\s+=\s+(\d+)")
per_db = collections.Counter()
for line in open(sys.argv[2], errors="replace"):
    m = read.match(line)
    if m and int(m.group(2)) > 0:
        per_db[database.get(m.group(1), "unknown")] += 1
print("round trips per checkout, pool checks included (strace of the backends, %d checkouts)" % checkouts)
for db in ("books", "orders", "coordinator"):
    print("  %-12s %6.1f" % (db, per_db[db] / checkouts))
total = sum(per_db[db] for db in ("books", "orders", "coordinator"))
print("  %-12s %6.1f" % ("total", total / checkouts))
if per_db["unknown"]:
    print("  (%.1f more per checkout on backends gone before the end of the trace)" % (per_db["unknown"] / checkouts))
