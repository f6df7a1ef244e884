#!/usr/bin/env bash
# Where PostgreSQL's CPU goes during checkouts (docs/BENCHMARKS.md, "Where PostgreSQL's time goes"):
# a real `bookstore up` (one plain PostgreSQL, as bench/checkout.sh's default) whose server is
# started with pg_stat_statements loaded — through a BOOKSTORE_PG_BIN directory whose `postgres`
# adds `shared_preload_libraries`, so nothing of the platform changes — driven by wrk like
# bench/checkout.sh, and during the measured run:
#   - pg_stat_statements (room for 50 000 statements: every COMMIT PREPARED names its own gid, so
#     is a statement of its own): calls, execution and planning time, buffers, WAL per statement;
#   - pg_stat_activity sampled every 200 ms: what the busy backends wait for;
#   - pg_stat_database / pg_stat_wal / pg_stat_user_tables before and after (commits, WAL syncs,
#     sequential scans, HOT updates);
#   - bench/cpu_split.py: CPU per component per committed checkout;
#   - with PERF=1 (and perf installed): `perf record --call-graph dwarf` of the whole machine, then
#     bench/pg_profile.py: each database's backends' samples per checkout and the share of them
#     under a list of PostgreSQL functions (commit and WAL flush, constraint checks, triggers,
#     parsing, planning, socket reads and writes).
#
#   BOOKSTORE_BIN=<release binary> flock -o /tmp/bench.lock bench/checkout-pg-profile.sh
#
# Knobs: MODE=2pc|saga, CLIENTS=32, DURATION=10, WARMUP=3, CUSTOMERS=64, BOOKS=200, PERF=1,
# EXTRA_SQL='db|statement' lines run as the superuser before the seed (an ablation: drop a
# constraint, ALTER DATABASE … SET …), BENCH_OUT=<dir>.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-2pc}; CLIENTS=${CLIENTS:-32}; DURATION=${DURATION:-10}; WARMUP=${WARMUP:-3}
CUSTOMERS=${CUSTOMERS:-64}; BOOKS=${BOOKS:-200}
source bench/lib.sh
command -v wrk >/dev/null || die "wrk is missing (bench/gateway-vs-nginx.sh installs it)"
scripts/setup.sh
bookstore_binary
out=${BENCH_OUT:-$(mktemp -d /tmp/checkout-pg-profile.XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/checkout-pg-profile-work.XXXXXX)
chmod 755 "$work"
cleanup() { local code=$?; trap - EXIT INT TERM; stop_platform; rm -rf "$work"; exit "$code"; }
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# The server binaries, with `postgres` loading pg_stat_statements.
real=$(dirname "$(readlink -f "$(ls /usr/lib/postgresql/15/bin/postgres)")")
mkdir -p "$work/pgbin"
for tool in "$real"/*; do ln -s "$tool" "$work/pgbin/"; done
rm "$work/pgbin/postgres"
cat >"$work/pgbin/postgres" <<SH
#!/bin/sh
exec $real/postgres "\$@" -c shared_preload_libraries=pg_stat_statements \
  -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on \
  -c pg_stat_statements.max=50000
SH
chmod 755 "$work/pgbin/postgres"

BOOKSTORE_PG_BIN=$work/pgbin start_platform "$work/platform" --pg-nodes 1
port=$(json_field "$work/platform/state.json" postgres_port)
export PGPASSWORD
PGPASSWORD=$(json_field "$work/platform/secrets.json" postgres_superuser)
q() { psql -X -h 127.0.0.1 -p "$port" -U postgres -d "${DB:-postgres}" -Atc "$1"; }
for db in postgres books orders coordinator; do
  DB=$db q "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
done
if [[ -n "${EXTRA_SQL:-}" ]]; then
  while IFS='|' read -r db sql; do [[ -n "$db" ]] && DB=$db q "$sql"; done <<<"$EXTRA_SQL"
fi
python3 bench/seed.py "$gateway" "$work/platform/secrets.json" "$BOOKS" "$CUSTOMERS" "$work"
say "$MODE: warm-up ${WARMUP}s, then ${DURATION}s at $CLIENTS connections"
wrk -t2 -c"$CLIENTS" -d"${WARMUP}s" -s bench/checkout.lua "$gateway" -- "$work/tokens.txt" \
  "$work/books.txt" "$MODE" >/dev/null

tables() {
  for db in books orders coordinator; do
    DB=$db q "SELECT '$db', relname, seq_scan, seq_tup_read, idx_scan, n_tup_ins, n_tup_upd,
                     n_tup_hot_upd FROM pg_stat_user_tables ORDER BY relname"
  done
}
stats() {
  q "SELECT datname, xact_commit, xact_rollback, blks_hit, tup_returned FROM pg_stat_database
     WHERE datname IN ('books', 'orders', 'coordinator') ORDER BY datname"
  q "SELECT 'wal', wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"
}
q "SELECT pg_stat_statements_reset()" >/dev/null
stats >"$out/stats-before.txt"
tables >"$out/tables-before.txt"
python3 bench/cpu_split.py snapshot "$work/cpu-before.json" "$up_pid" "$work"
(
  for _ in $(seq 1 $((DURATION * 5))); do
    q "SELECT datname || ' ' || coalesce(wait_event_type || ':' || wait_event, 'on CPU') || ' (' ||
              state || ')'
       FROM pg_stat_activity
       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'"
    sleep 0.2
  done >"$work/waits.txt"
) &
sampler=$!
perf_pid=
if [[ -n "${PERF:-}" ]] && command -v perf >/dev/null; then
  perf record -a -F 299 --call-graph dwarf,16384 -o "$work/perf.data" -- sleep "$DURATION" \
    2>"$work/perf.err" &
  perf_pid=$!
fi
wrk -t2 -c"$CLIENTS" -d"${DURATION}s" --latency -s bench/checkout.lua "$gateway" -- \
  "$work/tokens.txt" "$work/books.txt" "$MODE" | tee "$out/wrk.txt"
python3 bench/cpu_split.py snapshot "$work/cpu-after.json" "$up_pid" "$work"
stats >"$out/stats-after.txt"
tables >"$out/tables-after.txt"
q "SELECT pid, datname FROM pg_stat_activity WHERE datname IS NOT NULL" >"$work/backends.txt"
wait "$sampler" || true
[[ -n $perf_pid ]] && { wait "$perf_pid" || true; }
committed=$(sed -n 's/.*201=\([0-9]*\).*/\1/p' "$out/wrk.txt")
n=$(( ${committed:-0} > 0 ? committed : 1 ))

say "CPU per component (ms per committed checkout)"
python3 bench/cpu_split.py diff "$work/cpu-before.json" "$work/cpu-after.json" "$n" \
  "$out/cpu.json" | tee "$out/cpu.txt"
say "statements per committed checkout (calls, exec and plan ms, shared buffers hit, WAL bytes)"
q "SELECT rpad(d.datname, 12), to_char(sum(s.calls) / $n, '990.99'),
          to_char(sum(s.total_exec_time) / $n, '990.999'),
          to_char(sum(s.total_plan_time) / $n, '990.999'),
          to_char(sum(s.shared_blks_hit) / $n, '99990.9'),
          to_char(sum(s.wal_bytes) / $n, '999990'),
          left(regexp_replace(regexp_replace(s.query, '''[^'']*''', '''…''', 'g'), '\s+', ' ', 'g'), 110)
   FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
   WHERE d.datname IN ('books', 'orders', 'coordinator')
   GROUP BY 1, 7 ORDER BY sum(s.total_exec_time + s.total_plan_time) DESC LIMIT 25" |
  tee "$out/statements.txt"
say "what busy backends waited for (samples every 200 ms)"
sort "$work/waits.txt" | uniq -c | sort -rn | head -15 | tee "$out/waits.txt"
say "commits, WAL syncs, scans (before / after)"
paste -d' ' "$out/stats-before.txt" "$out/stats-after.txt" | tee "$out/stats.txt"
if [[ -n $perf_pid ]]; then
  perf script -i "$work/perf.data" --comm postgres -F pid,ip,sym 2>/dev/null >"$work/perf.txt"
  say "PostgreSQL samples by database, and the share under each function"
  python3 bench/pg_profile.py "$work/perf.txt" "$work/backends.txt" "$n" | tee "$out/profile.txt"
fi
say "results in $out"
