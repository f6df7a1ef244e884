#!/usr/bin/env bash
# Backup throughput, side by side in one run (results in docs/BENCHMARKS.md):
#   1. `bookstore backup` from a streaming replica (replay paused, pg_dump -Fc on the replica);
#   2. plain `pg_dump -Fc` of the primary — what you would do without a replica;
#   3. `bookstore backup` with its per-table fingerprints (the second read `restore --verify` needs).
# Each runs while pgbench writes on the primary for the same time, so the table also shows what each
# costs the primary's write throughput. Prints MB/s (dump file size ÷ time), rows/s and pgbench TPS.
#
#   bench/backup.sh
#
# Knobs (environment): SCALE=10 (pgbench scale: 100 000 account rows each), CLIENTS=4 (pgbench),
# ROUNDS=2 (each measurement repeated, alternating), BOOKSTORE_BIN=<path> (else the release binary is
# built), BENCH_OUT=<dir>.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-4}
ROUNDS=${ROUNDS:-2}
say() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

PGBIN=${BOOKSTORE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[[ -x "$PGBIN/pg_basebackup" ]] || die "PostgreSQL binaries not found: set BOOKSTORE_PG_BIN"
if [[ -n "${BOOKSTORE_BIN:-}" ]]; then
  BOOKSTORE=$BOOKSTORE_BIN
else
  say "building the release binary"
  cargo build --release --quiet --bin bookstore
  target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  BOOKSTORE="$target_dir/release/bookstore"
fi

OUT=${BENCH_OUT:-$(mktemp -d /tmp/bookstore-bench-backup.XXXXXX)}
chmod 755 "$OUT"
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [[ $(id -u) == 0 ]]; then chown postgres "$OUT"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(free_port); P2=$(free_port)
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$OUT/replica" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$OUT/primary" -m immediate stop >/dev/null 2>&1 || true
  [[ -n "${BENCH_OUT:-}" ]] || rm -rf "$OUT"
}
trap cleanup EXIT

say "primary on $P1, replica on $P2, data in $OUT"
as_pg "$PGBIN/initdb" --no-sync -D "$OUT/primary" -U postgres --auth=trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$OUT/primary" -l "$OUT/primary.log" -w \
  -o "-p $P1 -k $OUT -c listen_addresses=127.0.0.1 -c wal_keep_size=1GB" start >/dev/null
"$PGBIN/createdb" -h 127.0.0.1 -p "$P1" -U postgres bench
say "loading pgbench scale $SCALE"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -i -q -s "$SCALE" bench 2>/dev/null
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$OUT/replica" -R -X stream --checkpoint=fast
echo "primary_conninfo = 'host=127.0.0.1 port=$P1 user=postgres application_name=replica'" |
  as_pg tee -a "$OUT/replica/postgresql.auto.conf" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$OUT/replica" -l "$OUT/replica.log" -w \
  -o "-p $P2 -k $OUT -c listen_addresses=127.0.0.1" start >/dev/null
psql_p() { "$PGBIN/psql" -h 127.0.0.1 -p "$1" -U postgres -d bench -Atqc "$2"; }
until [[ $(psql_p "$P2" "SELECT count(*) FROM pgbench_branches") == "$SCALE" ]]; do sleep 0.2; done
ROWS=$(psql_p "$P1" "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_branches) + (SELECT count(*) FROM pgbench_tellers)")
DBSIZE=$(psql_p "$P1" "SELECT pg_database_size('bench')")
URL="postgresql://postgres@127.0.0.1:$P1,127.0.0.1:$P2/bench"

# Runs "$@" while pgbench writes on the primary; sets RESULT to "seconds bytes tps".
measure() {
  local file=$1; shift
  rm -rf "$OUT/run" "$OUT/run.dump"
  "$PGBIN/pgbench" -h 127.0.0.1 -p "$P1" -U postgres -c "$CLIENTS" -T 600 -n bench >"$OUT/pgbench.out" 2>&1 &
  local load=$!
  sleep 1
  local t0 t1 tx0 tx1
  tx0=$(psql_p "$P1" "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  tx1=$(psql_p "$P1" "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")
  kill -TERM "$load" 2>/dev/null || true  # (SIGINT is ignored by background jobs of a script)
  wait "$load" 2>/dev/null || true
  local bytes
  bytes=$(stat -c %s "$file")
  RESULT=$(python3 -c "t=$t1-$t0; print(f'{t:.2f} $bytes {($tx1-$tx0)/t:.0f}')")
}

declare -A total_s total_b total_tps
for kind in replica primary fingerprints; do total_s[$kind]=0; total_b[$kind]=0; total_tps[$kind]=0; done
add() { # kind; reads RESULT ("seconds bytes tps")
  read -r s b tps <<<"$RESULT"
  total_s[$1]=$(python3 -c "print(${total_s[$1]} + $s)")
  total_b[$1]=$(( ${total_b[$1]} + b ))
  total_tps[$1]=$(python3 -c "print(${total_tps[$1]} + $tps)")
  say "$1: ${s} s, $b bytes, primary $tps tps"
}
for round in $(seq "$ROUNDS"); do
  say "round $round"
  measure "$OUT/run/bench.dump" "$BOOKSTORE" backup --url "$URL" --database bench --out "$OUT/run" \
    --state-dir "$OUT/state" --no-fingerprints --quiet
  add replica
  measure "$OUT/run.dump" "$PGBIN/pg_dump" -h 127.0.0.1 -p "$P1" -U postgres -Fc -f "$OUT/run.dump" bench
  add primary
  measure "$OUT/run/bench.dump" "$BOOKSTORE" backup --url "$URL" --database bench --out "$OUT/run" \
    --state-dir "$OUT/state" --quiet
  add fingerprints
done

echo
echo "backup of pgbench scale $SCALE ($ROWS rows, database $((DBSIZE / 1000000)) MB), $ROUNDS rounds, pgbench -c $CLIENTS writing on the primary meanwhile"
echo "MB/s = database size ÷ time (what was read); dump MB = the compressed custom-format file"
printf '%-44s %8s %8s %8s %12s %14s\n' "" "s" "MB/s" "dump MB" "rows/s" "primary tps"
for kind in replica primary fingerprints; do
  case $kind in
    replica) label="bookstore backup (replica, paused)";;
    primary) label="pg_dump -Fc of the primary";;
    fingerprints) label="bookstore backup + fingerprints";;
  esac
  python3 - "$label" "${total_s[$kind]}" "${total_b[$kind]}" "${total_tps[$kind]}" "$ROUNDS" "$ROWS" "$DBSIZE" <<'PY'
import sys
label, s, b, tps, rounds, rows, db = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
print(f"{label:<44} {s/rounds:8.2f} {db*rounds/s/1e6:8.1f} {b/rounds/1e6:8.1f} {rows*rounds/s:12.0f} {tps/rounds:14.0f}")
PY
done
