#!/usr/bin/env bash
# The warehouse ETL on a generated data set, measured in one run:
#   full load: every source row into an empty warehouse (rows/s = order lines loaded per second);
#   incremental: then 1 % of the rows change (new orders worth 1 % of the lines, 1 % of the books
#   repriced, 1 % of the ratings replaced) and an incremental load runs; its time is reported as a
#   ratio of the full load's (goal ≤ 5 %).
# Usage: [REPLICA=1] warehouse.sh [order_lines=1000000] [bookstore binary=target/release/bookstore] [port=55700]
# Starts its own scratch PostgreSQL (as the postgres OS user when run as root) and stops it at the
# end. The generator writes straight into the books and orders schemas (their real migrations).
# REPLICA=1 also starts a streaming replica (pg_basebackup, port+1) and gives the ETL both as a
# multi-host URL, as on the cluster: the loads then read the replica (printed from etl_runs.source).
set -euo pipefail
LINES=${1:-1000000}; BOOKSTORE=${2:-target/release/bookstore}; PORT=${3:-55700}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$BOOKSTORE" ] || { echo "no $BOOKSTORE: cargo build --release first, or pass the binary" >&2; exit 1; }
BIN=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
WORK=$(mktemp -d -t warehouse-bench.XXXX)
AS=(); if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); chown postgres "$WORK"; fi
"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
shared_buffers = 256MB
max_wal_size = 4GB
fsync = off
CONF
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -o "-p $PORT" -w start >/dev/null
trap '"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null; rm -rf "$WORK"' EXIT
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
for db in books orders warehouse; do "${PSQL[@]}" -d postgres -c "CREATE DATABASE $db"; done
# One transaction per file, as sqlx applies them (a migration may LOCK a table).
for f in "$ROOT"/services/books/migrations/*.sql; do "${PSQL[@]}" -d books -1 -f "$f"; done
for f in "$ROOT"/services/orders/migrations/*.sql; do "${PSQL[@]}" -d orders -1 -f "$f"; done

ORDERS=$((LINES / 3)); BOOKS=$((LINES / 100 + 10)); CUSTOMERS=$((LINES / 50 + 10)); RATINGS=$((LINES / 10))
echo "generating $LINES order lines ($ORDERS orders), $BOOKS books, $CUSTOMERS customers, $RATINGS ratings" >&2
"${PSQL[@]}" -d books <<SQL
INSERT INTO books (id, isbn, title, author, genre, price_cents, stock)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, '978' || lpad(g::text, 10, '0'),
       'Title ' || g, 'Author ' || (g % 997), 'genre-' || (g % 12), 100 + g % 5000, 1000
FROM generate_series(1, $BOOKS) g;
INSERT INTO ratings (customer_id, book_id, rating_id, stars, stream_ms, stream_seq, rated_at)
SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g % $CUSTOMERS + 1), 12, '0'))::uuid,
       ('00000000-0000-4000-8000-' || lpad(to_hex(g % $BOOKS + 1), 12, '0'))::uuid,
       gen_random_uuid(), 1 + g % 5, 0, g, now() - (g % 365) * interval '1 day'
FROM generate_series(1, $RATINGS) g ON CONFLICT DO NOTHING;
SQL
generate_orders() { # $1 first order number, $2 count
"${PSQL[@]}" -d orders <<SQL
-- The generator's totals match their lines by construction; skip the per-row check triggers.
SET session_replication_role = replica;
INSERT INTO orders (id, customer_id, mode, status, total_cents, created_at)
SELECT ('00000000-0000-4000-a000-' || lpad(to_hex(g), 12, '0'))::uuid,
       ('00000000-0000-4000-9000-' || lpad(to_hex(g % $CUSTOMERS + 1), 12, '0'))::uuid,
       CASE WHEN g % 2 = 0 THEN '2pc' ELSE 'saga' END, 'committed', 3 * 250,
       now() - (g % 365) * interval '1 day'
FROM generate_series($1, $1 + $2 - 1) g;
INSERT INTO order_lines (order_id, line_no, book_id, quantity, price_cents)
SELECT ('00000000-0000-4000-a000-' || lpad(to_hex(g), 12, '0'))::uuid, n,
       ('00000000-0000-4000-8000-' || lpad(to_hex((g * 7 + n) % $BOOKS + 1), 12, '0'))::uuid, 1, 250
FROM generate_series($1, $1 + $2 - 1) g, generate_series(1, 3) n;
SQL
}
"${PSQL[@]}" -d orders -c "INSERT INTO customers (id, email, name, password_hash)
  SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g), 12, '0'))::uuid, 'c' || g || '@example.com',
         'Customer ' || g, '\$argon2id\$bench' FROM generate_series(1, $CUSTOMERS) g"
generate_orders 1 "$ORDERS"
"${PSQL[@]}" -d postgres -c "VACUUM ANALYZE" 2>/dev/null || true
for db in books orders; do "${PSQL[@]}" -d $db -c "VACUUM ANALYZE"; done

SOURCES="127.0.0.1:$PORT"
caught_up() { :; }
if [ "${REPLICA:-0}" = 1 ]; then
  RPORT=$((PORT + 1))
  "${AS[@]}" "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$WORK/replica" \
    --write-recovery-conf --wal-method=stream --checkpoint=fast
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/replica" -l "$WORK/replica.log" -o "-p $RPORT" -w start >/dev/null
  trap '"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/replica" -m fast -w stop >/dev/null; "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null; rm -rf "$WORK"' EXIT
  SOURCES="127.0.0.1:$PORT,127.0.0.1:$RPORT"
  # Before each load: the replica has replayed everything the primary has inserted.
  caught_up() {
    local target; target=$("${PSQL[@]}" -d postgres -Atc "SELECT pg_current_wal_insert_lsn()")
    until [ "$(psql -X -h 127.0.0.1 -p "$RPORT" -U postgres -d postgres -Atc \
        "SELECT pg_last_wal_replay_lsn() >= '$target'")" = t ]; do sleep 0.2; done
  }
fi
export BOOKSTORE_DB__URL="postgres://postgres@127.0.0.1:$PORT/warehouse"
export BOOKSTORE_SOURCES__BOOKS__URL="postgres://postgres@$SOURCES/books"
export BOOKSTORE_SOURCES__ORDERS__URL="postgres://postgres@$SOURCES/orders"
export CI=1 RUST_LOG=error
seconds() { local start end; start=$(date +%s.%N); "$BOOKSTORE" warehouse load "$@" >"$WORK/load.out"; end=$(date +%s.%N); cat "$WORK/load.out" >&2; python3 -c "print($end - $start)"; }
caught_up
full=$(seconds --full)

CHANGED=$((LINES / 100 / 3))
generate_orders $((ORDERS + 1)) "$CHANGED"
"${PSQL[@]}" -d books -c "UPDATE books SET price_cents = price_cents + 1 WHERE id IN (SELECT id FROM books ORDER BY id LIMIT $BOOKS / 100 + 1)"
"${PSQL[@]}" -d books -c "UPDATE ratings SET stars = 6 - stars WHERE ctid IN (SELECT ctid FROM ratings LIMIT $RATINGS / 100)"
caught_up
incremental=$(seconds)
"${PSQL[@]}" -d warehouse -Atc "SELECT mode || ' read from ' || source FROM etl_runs ORDER BY started_at" >&2

python3 - "$LINES" "$full" "$incremental" <<'PY'
import sys
lines, full, inc = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"order_lines={lines}")
print(f"full_load_s={full:.2f} full_load_lines_per_s={lines / full:.0f}")
print(f"incremental_1pct_s={inc:.2f} incremental_over_full={inc / full:.3f}")
PY
