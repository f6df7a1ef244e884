#!/usr/bin/env python3
"""Counts the statements PostgreSQL executed per checkout, by database, from a server log written
with `log_statement = 'all'` and `log_line_prefix = '%m [%p] %d: '` (bench/checkout.sh sets both
for a few sequential checkouts after the measured runs).

    statements.py CHECKOUTS LOG_FILE:START_OFFSET...

The log files are every server log of the platform (a single server's postgres.log, or each Patroni
member's patroni.log, which holds its postmaster's output); only the lines written after each
offset are read.

One logged entry is one statement round trip from a client: a simple-protocol batch
(`statement: BEGIN …; …; INSERT …`) is one entry however many statements it holds, an
extended-protocol query is one `execute` entry. sqlx's pool check before each acquire (a bare Sync
message) runs no statement and is not logged, so it is not counted. Also printed: the entries of
each participant prepare, from its `BEGIN` to `PREPARE TRANSACTION` on the same backend.
"""
import collections
import re
import sys

checkouts = max(int(sys.argv[1]), 1)
logs = [(arg.rsplit(":", 1)[0], int(arg.rsplit(":", 1)[1])) for arg in sys.argv[2:]]
entry = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] (\w*): LOG:  (statement|execute [^:]*): (.*)$")
per_db = collections.Counter()
open_prepares = {}
prepares = collections.defaultdict(list)
for path, start in logs:
    with open(path, errors="replace") as log:
        log.seek(start)
        for line in log:
            m = entry.match(line)
            if not m:
                continue
            pid, db, _, sql = m.groups()
            per_db[db] += 1
            if db in ("books", "orders") and "BEGIN ISOLATION LEVEL READ COMMITTED" in sql:
                open_prepares[pid] = [db, 0]
            if pid in open_prepares:
                open_prepares[pid][1] += 1
                if "PREPARE TRANSACTION" in sql:
                    db_, n = open_prepares.pop(pid)
                    prepares[db_].append(n)
                elif re.search(r"\b(COMMIT|ROLLBACK)\b", sql):
                    open_prepares.pop(pid)  # a saga step or an abort, not a prepare
print("statement round trips per checkout (%d sequential 2PC checkouts)" % checkouts)
for db in sorted(per_db):
    if db in ("books", "orders", "coordinator"):
        print("  %-12s %6.1f" % (db, per_db[db] / checkouts))
for db in sorted(prepares):
    counts = prepares[db]
    print("  prepare on %-6s %4.1f round trips (from the barrier claim to PREPARE TRANSACTION, %d seen)"
          % (db, sum(counts) / len(counts), len(counts)))
