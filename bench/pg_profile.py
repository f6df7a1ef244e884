"""PostgreSQL's CPU samples per database, from `perf script -F pid,ip,sym` of a call-graph
recording (bench/checkout-pg-profile.sh): for each database, its backends' samples per committed
checkout (as CPU ms at the sampling frequency) and the share of them with each of a few PostgreSQL
functions on the stack (inclusive).
Usage: pg_profile.py <perf script output> <pid|datname lines> <committed checkouts> [Hz=299]"""
import collections
import sys

FUNCTIONS = [
    ("XLogFlush", "commit: WAL flush"),
    ("do_fsync", "  of it in fdatasync"),
    ("FinishPreparedTransaction", "COMMIT/ROLLBACK PREPARED"),
    ("ExecConstraints", "CHECK constraints"),
    ("stringToNode", "  re-reading stored expressions"),
    ("pg_regexec", "regular expressions"),
    ("standard_ExecutorFinish", "executor finish (CTE writes, AFTER triggers)"),
    ("RI_FKey_check_ins", "  foreign key checks"),
    ("plpgsql_exec_trigger", "PL/pgSQL triggers"),
    ("ExecInsertIndexTuples", "index inserts"),
    ("standard_ExecutorStart", "executor start-up"),
    ("raw_parser", "parsing SQL text"),
    ("standard_planner", "planning"),
    ("secure_read", "socket reads"),
    ("secure_write", "socket writes"),
]


def main():
    script, backends, committed = sys.argv[1], sys.argv[2], max(int(sys.argv[3]), 1)
    hz = float(sys.argv[4]) if len(sys.argv) > 4 else 299.0
    database = {}
    for line in open(backends):
        parts = line.strip().split("|")
        if len(parts) == 2:
            database[parts[0]] = parts[1]
    total = collections.Counter()
    under = collections.defaultdict(collections.Counter)
    pid, stack = None, []

    def flush():
        if pid is None:
            return
        db = database.get(pid, "(other)")
        total[db] += 1
        names = set(stack)
        for function, _ in FUNCTIONS:
            if function in names:
                under[db][function] += 1
        if "entry_SYSCALL_64_after_hwframe" in names:
            under[db]["<kernel>"] += 1

    for line in open(script):
        if not line.strip():
            flush()
            pid, stack = None, []
        elif not line.startswith("\t"):
            pid = line.split()[0]
        else:
            parts = line.split(None, 1)
            if len(parts) == 2:
                stack.append(parts[1].strip().split(" (")[0])
    flush()
    everything = sum(total.values()) or 1
    print("%-14s %9s %8s %16s" % ("database", "samples", "share", "ms per checkout"))
    for db, n in total.most_common():
        print("%-14s %9d %7.1f%% %16.2f" % (db, n, 100 * n / everything, 1000 * n / hz / committed))
    rows = [(f, label) for f, label in FUNCTIONS] + [("<kernel>", "in the kernel (system calls)")]
    dbs = [db for db, n in total.most_common() if db != "(other)" and n >= 50]
    print("\n%-46s" % "share of the database's samples" + "".join("%13s" % db for db in dbs))
    for function, label in rows:
        print("%-46s" % label + "".join("%12.1f%%" % (100 * under[db][function] / total[db]) for db in dbs))


if __name__ == "__main__":
    main()
