#!/usr/bin/env bash
# Checkout throughput and latency in both modes against the two PostgreSQL baselines the coordinator
# issue names, in one run (results and setup in docs/BENCHMARKS.md):
#   (a) the checkout's writes in ONE local transaction        (bench/pg-2pc-ceiling.sh, pgbench)
#   (b) the raw two-phase ceiling: books and orders writes each PREPAREd and COMMIT PREPAREd in their
#       own database, in parallel, no coordinator, no HTTP      (the same script)
# then a real `bookstore up` (gateway, 2 orders, 2 books, 2 coordinators, PostgreSQL) driven with wrk
# through the gateway: POST /api/checkout, one book per checkout, a fresh Idempotency-Key each time,
# round-robin over CUSTOMERS customers and BOOKS books, for mode 2pc and then saga.
#
#   bench/checkout.sh
#
# Knobs (environment): CLIENTS=32 (pgbench clients and wrk connections), DURATION=15 (seconds),
# WARMUP=3, CUSTOMERS=64, BOOKS=200, BOOKSTORE_BIN=<path> (else the release binary is built),
# STATEMENT_CHECKOUTS=20 (sequential checkouts with every statement logged, after the measured runs,
# counted by bench/statements.py, and every round trip the servers read during them, pool checks
# included, counted by bench/round_trips.py from strace; 0 skips them), BENCH_OUT=<dir> (raw outputs and results.json; a
# new /tmp directory by default), PG_NODES=1 (PostgreSQL members of the platform: 1 is one plain
# server, as the baselines' scratch server is, so (b) and the checkout run on the same kind of
# PostgreSQL; 5 is `up`'s default Patroni cluster with synchronous replication, whose commits also
# wait for a standby and whose replicas replay every write on the same cores).
# During each measured run, bench/cpu_split.py records the CPU time of every component (PostgreSQL,
# each service, the gateway, wrk) and prints it per committed checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
CUSTOMERS=${CUSTOMERS:-64}
BOOKS=${BOOKS:-200}
STATEMENT_CHECKOUTS=${STATEMENT_CHECKOUTS:-20}
PG_NODES=${PG_NODES:-1}
source bench/lib.sh

for tool in wrk curl python3 pgbench; do
  command -v "$tool" >/dev/null || [[ $tool == pgbench ]] ||
    die "$tool is missing: run bench/gateway-vs-nginx.sh once (it installs wrk), or apt-get install $tool"
done
scripts/setup.sh
bookstore_binary

out=${BENCH_OUT:-$(mktemp -d /tmp/checkout-bench.XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/checkout-bench-work.XXXXXX)
chmod 755 "$work"
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  stop_platform
  [[ -n "${BENCH_KEEP:-}" ]] && say "kept $work" || rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# A free port now: the script's fixed default (55600) lies in the ephemeral range, where a
# client's connection on the busy machine sometimes holds it.
baseline_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "baselines: bench/pg-2pc-ceiling.sh $CLIENTS $DURATION $baseline_port"
PATH="$(dirname "$(readlink -f "$(ls /usr/lib/postgresql/15/bin/pg_ctl)")"):$PATH" \
  bench/pg-2pc-ceiling.sh "$CLIENTS" "$DURATION" "$baseline_port" | tee "$out/baselines.txt"

say "starting the platform in $work ($PG_NODES PostgreSQL member(s))"
start_platform "$work/platform" --pg-nodes "$PG_NODES"
# Commits, rollbacks and new sessions per database, as the server counts them.
pg_stat() {
  local port password
  port=$(json_field "$work/platform/state.json" postgres_port)
  password=$(json_field "$work/platform/secrets.json" postgres_superuser)
  PGPASSWORD=$password psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc \
    "SELECT datname, xact_commit, xact_rollback, sessions FROM pg_stat_database
     WHERE datname IN ('books', 'orders', 'coordinator')"
}

say "creating $BOOKS books and $CUSTOMERS customers with credit"
python3 bench/seed.py "$gateway" "$work/platform/secrets.json" "$BOOKS" "$CUSTOMERS" "$work"

for mode in 2pc saga; do
  say "$mode: warm-up ${WARMUP}s, then ${DURATION}s at $CLIENTS connections"
  wrk -t2 -c"$CLIENTS" -d"${WARMUP}s" -s bench/checkout.lua "$gateway" -- "$work/tokens.txt" "$work/books.txt" "$mode" >/dev/null
  python3 bench/cpu_split.py snapshot "$work/cpu-before.json" "$up_pid" "$work"
  pg_stat >"$work/pg-before.txt"
  wrk -t2 -c"$CLIENTS" -d"${DURATION}s" --latency -s bench/checkout.lua "$gateway" -- \
    "$work/tokens.txt" "$work/books.txt" "$mode" | tee "$out/wrk-$mode.txt"
  python3 bench/cpu_split.py snapshot "$work/cpu-after.json" "$up_pid" "$work"
  pg_stat >"$work/pg-after.txt"
  committed=$(sed -n 's/.*201=\([0-9]*\).*/\1/p' "$out/wrk-$mode.txt")
  say "$mode: CPU per component during the run (ms/unit: per committed checkout)"
  python3 bench/cpu_split.py diff "$work/cpu-before.json" "$work/cpu-after.json" "${committed:-0}" \
    "$out/cpu-$mode.json" | tee "$out/cpu-$mode.txt"
  say "$mode: PostgreSQL transactions per committed checkout, by database"
  python3 - "$work/pg-before.txt" "$work/pg-after.txt" "${committed:-0}" <<'PY' | tee "$out/pg-$mode.txt"
import sys
def read(path):
    return {row[0]: [int(v) for v in row[1:]] for row in (l.split("|") for l in open(path).read().split())}
before, after, n = read(sys.argv[1]), read(sys.argv[2]), max(int(sys.argv[3]), 1)
print("%-12s %9s %9s %9s" % ("database", "commits", "rollbacks", "sessions"))
for db in sorted(after):
    d = [a - b for a, b in zip(after[db], before.get(db, [0, 0, 0]))]
    print("%-12s %9.2f %9.2f %9.2f" % (db, d[0] / n, d[1] / n, d[2] / n))
PY
done

# Statements per checkout: a few sequential 2PC checkouts with every statement logged (after the
# measured runs, which logging would slow down), counted by bench/statements.py.
if (( STATEMENT_CHECKOUTS > 0 )); then
  say "statements: $STATEMENT_CHECKOUTS sequential 2PC checkouts with log_statement = all"
  psql_super() {
    PGPASSWORD=$(json_field "$work/platform/secrets.json" postgres_superuser) psql -h 127.0.0.1 \
      -p "$(json_field "$work/platform/state.json" postgres_port)" -U postgres -d postgres -Atqc "$1"
  }
  # The single server's log, or each Patroni member's (its postmaster writes there).
  mapfile -t pglogs < <(find "$work/platform" -name postgres.log -o -name patroni.log)
  psql_super "ALTER SYSTEM SET log_statement = 'all'"
  psql_super "ALTER SYSTEM SET log_line_prefix = '%m [%p] %d: '"
  psql_super "SELECT pg_reload_conf()" && sleep 1
  offsets=()
  for log in "${pglogs[@]}"; do offsets+=("$log:$(stat -c %s "$log")"); done
  # Every round trip, including the ones that run no statement (sqlx's pool checks: a bare Sync),
  # as the server sees them: each read of a client message by a backend (a successful recvfrom),
  # traced with strace on every postmaster of the platform and its backends (-f: new ones too).
  tracer=
  if command -v strace >/dev/null; then
    pids=()
    for pidfile in $(find "$work/platform" -name postmaster.pid); do
      pm=$(head -n1 "$pidfile")
      pids+=(-p "$pm")
      for child in $(pgrep -P "$pm"); do pids+=(-p "$child"); done
    done
    strace -f -qq -e trace=recvfrom -e signal=none -o "$work/strace.txt" "${pids[@]}" 2>/dev/null &
    tracer=$!
    sleep 1
  fi
  token=$(head -n1 "$work/tokens.txt")
  for i in $(seq 1 "$STATEMENT_CHECKOUTS"); do
    book=$(sed -n "${i}p" "$work/books.txt")
    curl -sf -o /dev/null -X POST "$gateway/api/checkout" -H "authorization: Bearer $token" \
      -H 'content-type: application/json' -H "idempotency-key: statements-$i-$(date +%s%N)" \
      -d "{\"mode\":\"2pc\",\"items\":[{\"book_id\":\"$book\",\"quantity\":1}]}"
  done
  sleep 1
  if [[ -n $tracer ]]; then
    # Which database each traced backend serves (backends of this phase are still connected).
    psql_super "SELECT pid, datname FROM pg_stat_activity WHERE datname IS NOT NULL" >"$work/backends.txt"
    kill -INT "$tracer" 2>/dev/null; wait "$tracer" 2>/dev/null || true
  fi
  psql_super "ALTER SYSTEM RESET log_statement"
  psql_super "ALTER SYSTEM RESET log_line_prefix"
  psql_super "SELECT pg_reload_conf()"
  python3 bench/statements.py "$STATEMENT_CHECKOUTS" "${offsets[@]}" | tee "$out/statements.txt"
  if [[ -n $tracer ]]; then
    python3 bench/round_trips.py "$STATEMENT_CHECKOUTS" "$work/strace.txt" "$work/backends.txt" |
      tee -a "$out/statements.txt"
  fi
fi

python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
base = open(out + "/baselines.txt").read()
single = float(re.search(r"single_tx_per_s=(\d+)", base).group(1))
ceiling = float(re.search(r"raw_2pc_ceiling_tx_per_s=(\d+)", base).group(1))
def ms(text, p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)" % p, text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
results = {"single_tx_per_s": single, "raw_2pc_ceiling_tx_per_s": ceiling}
print("\n%-6s %10s %10s %10s %9s %9s  %s" % ("mode", "checkouts/s", "x ceiling", "x single", "p50 ms", "p99 ms", "statuses"))
for mode in ("2pc", "saga"):
    text = open("%s/wrk-%s.txt" % (out, mode)).read()
    statuses = dict(s.split("=") for s in re.search(r"statuses (.*)", text).group(1).split())
    secs = float(re.search(r"requests in ([\d.]+)s", text).group(1))
    ok = int(statuses.get("201", 0)) / secs
    results[mode] = {"committed_per_s": ok, "p50_ms": ms(text, 50), "p99_ms": ms(text, 99), "statuses": statuses}
    print("%-6s %10.0f %10.2f %10.2f %9.1f %9.1f  %s" % (mode, ok, ok / ceiling, ok / single,
          ms(text, 50), ms(text, 99), statuses))
json.dump(results, open(out + "/results.json", "w"), indent=2)
print("\n(a) single local transaction: %.0f/s   (b) raw 2PC ceiling: %.0f/s   results: %s/results.json" % (single, ceiling, out))
PY
