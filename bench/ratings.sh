#!/usr/bin/env bash
# Write-behind ratings and the book cache, each against its baseline, in one run (results and setup
# in docs/BENCHMARKS.md):
#   1. `bookstore up` as shipped (3 Redis nodes): POST /api/books/{id}/ratings through the gateway,
#      answered 202 once the rating is in the Redis Stream; then the time the persisters need to
#      drain what was accepted into PostgreSQL; then GET /api/books/{id} served from the cache.
#   2. `bookstore up --redis-nodes 0` with ratings written through (BOOKSTORE_BOOKS__RATINGS__
#      WRITE_THROUGH=true): the same POSTs, each persisted in its own transaction before its 201 —
#      one INSERT per rating; then the same GETs, each a database read.
# Ratios: write-behind ÷ write-through accepted ratings/s; cache-hit ÷ database GETs/s.
#
#   bench/ratings.sh
#
# Knobs (environment): CLIENTS=32 (wrk connections), DURATION=15 (seconds), WARMUP=3, CUSTOMERS=64,
# BOOKS=200, STARS=book (every rating of a book has the same stars, so re-ratings never move the
# totals) or random (1–5 at random: most re-ratings move them), BOOKSTORE_BIN=<path> (else the release binary is built), BENCH_OUT=<dir>. Each measured
# run also prints the CPU time of every component per successful request (bench/cpu_split.py), and
# write-behind also from the start of its run until the persisters have emptied the stream (the
# warm-up's ratings are persisted before the run starts), per accepted rating.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
CUSTOMERS=${CUSTOMERS:-64}
BOOKS=${BOOKS:-200}
STARS=${STARS:-book}
source bench/lib.sh

for tool in wrk curl python3 redis-cli; do
  command -v "$tool" >/dev/null ||
    die "$tool is missing: run bench/gateway-vs-nginx.sh once (it installs wrk), or apt-get install $tool"
done
scripts/setup.sh
bookstore_binary

out=${BENCH_OUT:-$(mktemp -d /tmp/ratings-bench.XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/ratings-bench-work.XXXXXX)
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

# seeded_platform <dir> [up options...]: starts `bookstore up`, sets $gateway, creates the data.
seeded_platform() {
  local dir=$1
  start_platform "$@"
  say "creating $BOOKS books and $CUSTOMERS customers"
  python3 bench/seed.py "$gateway" "$dir/secrets.json" "$BOOKS" "$CUSTOMERS" "$dir"
}

# pg_note <dir> <label>: appends "<label> <WAL bytes so far> <commits in the books database so far>
# <table>=<updates>/<HOT updates> …" of the platform's primary to $out/pg.txt: the WAL each persisted
# rating cost, the transactions (write-behind: about one per persisted batch), whether the updates
# were HOT (the totals: `books` before migration 0004, `book_rating_totals` after it; re-ratings:
# `ratings`, HOT since 0005).
pg_note() {
  PGPASSWORD=$(json_field "$1/secrets.json" postgres_superuser) psql -X -h 127.0.0.1 \
    -p "$(json_field "$1/state.json" postgres_port)" -U postgres -d books -Atqc \
    "SELECT '$2 ' || (pg_current_wal_lsn() - '0/0') || ' '
            || (SELECT xact_commit FROM pg_stat_database WHERE datname = 'books') || ' '
            || coalesce(string_agg(relname || '=' || n_tup_upd || '/' || n_tup_hot_upd, ' '
                                   ORDER BY relname), '')
       FROM pg_stat_user_tables WHERE relname IN ('books', 'book_rating_totals', 'ratings')" >>"$out/pg.txt"
}

# batch_note <dir> <label>: appends "<label> <entries> <batches> <p50s…>" to $out/batches.txt — the
# persisters' batches so far, summed over the books instances (`bookstore_ratings_batch_entries`,
# a summary: its _sum and _count, and each instance's median over the summary's recent window).
batch_note() {
  python3 - "$1/state.json" "$2" >>"$out/batches.txt" <<'PY'
import json, re, sys, urllib.request
state = json.load(open(sys.argv[1]))
total = count = 0.0
medians = []
for p in state["processes"]:
    if p["kind"] != "books":
        continue
    text = urllib.request.urlopen(p["url"] + "/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        m = re.match(r'bookstore_ratings_batch_entries(_sum|_count|\{[^}]*quantile="0\.5"[^}]*\})?\S* ([\d.e+-]+)$', line)
        if not m or m.group(1) is None:
            continue
        if m.group(1) == "_sum":
            total += float(m.group(2))
        elif m.group(1) == "_count":
            count += float(m.group(2))
        else:
            medians.append(m.group(2))
print(sys.argv[2], int(total), int(count), *medians)
PY
}

# load <name> <what>: warm-up, then the measured wrk run into $out/wrk-<name>.txt.
load() {
  local name=$1 what=$2 dir=$3
  say "$name: warm-up ${WARMUP}s, then ${DURATION}s at $CLIENTS connections"
  wrk -t2 -c"$CLIENTS" -d"${WARMUP}s" -s bench/ratings.lua "$gateway" -- "$dir/tokens.txt" "$dir/books.txt" "$what" "$STARS" >/dev/null
  # The warm-up's ratings persisted first, so the measured CPU is the measured ratings'.
  [[ $name == behind ]] && wait_drained "$dir"
  python3 bench/cpu_split.py snapshot "$work/cpu-before.json" "$up_pid" "$work"
  [[ $what == rate ]] && pg_note "$dir" "$name-start"
  [[ $name == behind ]] && batch_note "$dir" "$name-start"
  wrk -t2 -c"$CLIENTS" -d"${DURATION}s" --latency -s bench/ratings.lua "$gateway" -- \
    "$dir/tokens.txt" "$dir/books.txt" "$what" "$STARS" | tee "$out/wrk-$name.txt"
  python3 bench/cpu_split.py snapshot "$work/cpu-after.json" "$up_pid" "$work"
  local ok
  ok=$(sed -n 's/.*\(20[012]\)=\([0-9]*\).*/\2/p' "$out/wrk-$name.txt")
  say "$name: CPU per component during the run (ms/unit: per successful request)"
  python3 bench/cpu_split.py diff "$work/cpu-before.json" "$work/cpu-after.json" "${ok:-0}" \
    "$out/cpu-$name.json" | tee "$out/cpu-$name.txt"
}

# The stream node: where the books instances were told the ratings stream is (redis-1).
stream_port() {
  python3 -c 'import json,sys; print(next(p["url"].rsplit(":",1)[1] for p in json.load(open(sys.argv[1]))["processes"] if p["name"] == "redis-1"))' "$1/state.json"
}
stream_pending() {
  redis-cli -p "$(stream_port "$1")" -n 1 XLEN books:ratings
}
# wait_drained <dir>: until the persisters have emptied the stream (at most 120 s).
wait_drained() {
  for _ in $(seq 1 1200); do
    [[ $(stream_pending "$1") == 0 ]] && return
    sleep 0.1
  done
  die "the persisters did not drain the stream within 120 s"
}

say "1/2: write-behind and the cache (bookstore up as shipped)"
seeded_platform "$work/behind"
load behind rate "$work/behind"
drain_start=$(date +%s.%N)
wait_drained "$work/behind"
drain_end=$(date +%s.%N)
echo "drain_seconds=$(python3 -c "print(round($drain_end - $drain_start, 2))")" | tee "$out/drain.txt"
# What persisting the accepted ratings cost, wherever it fell: the measured run plus the drain
# (the persisters may fall behind during the run and finish after it).
python3 bench/cpu_split.py snapshot "$work/cpu-drained.json" "$up_pid" "$work"
pg_note "$work/behind" behind-end
batch_note "$work/behind" behind-end
say "behind incl. drain: CPU per component from the start of the run until the stream was empty (ms/unit: per rating)"
python3 bench/cpu_split.py diff "$work/cpu-before.json" "$work/cpu-drained.json" \
  "$(sed -n 's/.*202=\([0-9]*\).*/\1/p' "$out/wrk-behind.txt")" "$out/cpu-behind-drained.json" |
  tee "$out/cpu-behind-drained.txt"
load cached read "$work/behind"
pg_note "$work/behind" behind-stats # the counters of the persisters' last batches flushed by now

# The storage paths alone, on the same servers: XADD of a rating-sized entry (redis-benchmark) vs
# one INSERT per rating in its own transaction (pgbench), both at $CLIENTS connections.
say "storage alone: XADD vs one INSERT per transaction, ${DURATION}s each"
redis_port=$(stream_port "$work/behind")
redis-benchmark -p "$redis_port" --dbnum 2 -c "$CLIENTS" -n $((DURATION * 20000)) -q \
  XADD bench:ratings '*' rating_id 0190d0a0-0000-7000-8000-000000000000 \
  customer_id 0190d0a0-0000-7000-8000-000000000001 book_id 0190d0a0-0000-7000-8000-000000000002 \
  stars 4 text bench at 1733200000000 | tr '\r' '\n' | grep -a 'requests per second' | tail -1 | tee "$out/xadd.txt"
pg_port=$(json_field "$work/behind/state.json" postgres_port)
pg_password=$(json_field "$work/behind/secrets.json" postgres_superuser)
cat >"$work/insert.sql" <<'SQL'
INSERT INTO ratings (customer_id, book_id, rating_id, stars, text, stream_ms, stream_seq, rated_at)
VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 4, 'bench', 1733200000000, 0, now());
SQL
pgbench_bin=$(dirname "$(readlink -f "$(command -v pg_ctl)")")/pgbench
PGPASSWORD=$pg_password "$pgbench_bin" -h 127.0.0.1 -p "$pg_port" -U postgres -n -M prepared \
  -c "$CLIENTS" -j 2 -T "$DURATION" -f "$work/insert.sql" books 2>&1 | tee "$out/insert.txt" | grep '^tps'
PGPASSWORD=$pg_password psql -h 127.0.0.1 -p "$pg_port" -U postgres -d books -qc \
  "DELETE FROM ratings WHERE text = 'bench' AND stream_ms = 1733200000000"
stop_platform

say "2/2: write-through and no cache (bookstore up --redis-nodes 0)"
BOOKSTORE_BOOKS__RATINGS__WRITE_THROUGH=true seeded_platform "$work/through" --redis-nodes 0
load through rate "$work/through"
pg_note "$work/through" through-end
load database read "$work/through"
pg_note "$work/through" through-stats
stop_platform

python3 - "$out" "$DURATION" <<'PY'
import json, re, sys
out, duration = sys.argv[1], float(sys.argv[2])
def ms(text, p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)" % p, text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
def run(name, ok):
    text = open("%s/wrk-%s.txt" % (out, name)).read()
    statuses = dict(s.split("=") for s in re.search(r"statuses (.*)", text).group(1).split())
    secs = float(re.search(r"requests in ([\d.]+)s", text).group(1))
    return {"ok_per_s": int(statuses.get(ok, 0)) / secs, "p50_ms": ms(text, 50), "p99_ms": ms(text, 99),
            "statuses": statuses, "ok": int(statuses.get(ok, 0))}
r = {"behind": run("behind", "202"), "through": run("through", "201"),
     "cached": run("cached", "200"), "database": run("database", "200")}
drain = float(re.search(r"drain_seconds=([\d.]+)", open(out + "/drain.txt").read()).group(1))
r["behind"]["persisted_per_s_incl_drain"] = r["behind"]["ok"] / (duration + drain)
print("\n%-14s %10s %9s %9s  %s" % ("run", "ok/s", "p50 ms", "p99 ms", "statuses"))
for name in ("behind", "through", "cached", "database"):
    x = r[name]
    print("%-14s %10.0f %9.2f %9.2f  %s" % (name, x["ok_per_s"], x["p50_ms"], x["p99_ms"], x["statuses"]))
print("\nwrite-behind accepted / write-through: %.2fx   (persisted incl. %.1f s drain: %.0f/s = %.2fx)" % (
    r["behind"]["ok_per_s"] / max(r["through"]["ok_per_s"], 1e-9), drain,
    r["behind"]["persisted_per_s_incl_drain"],
    r["behind"]["persisted_per_s_incl_drain"] / max(r["through"]["ok_per_s"], 1e-9)))
drained = json.load(open(out + "/cpu-behind-drained.json"))
through_cpu = json.load(open(out + "/cpu-through.json"))
r["cpu_ms_per_rating"] = {
    "behind_incl_drain": {k: round(1000 * v / max(r["behind"]["ok"], 1), 3) for k, v in drained.items()},
    "through": {k: round(1000 * v / max(r["through"]["ok"], 1), 3) for k, v in through_cpu.items()},
}
for name in ("behind_incl_drain", "through"):
    cpu = r["cpu_ms_per_rating"][name]
    print("CPU per rating, %-17s total %.3f ms: postgres %.3f, books %.3f, gateway %.3f, redis %.3f" % (
        name.replace("_", " "), sum(cpu.values()), cpu.get("postgres", 0), cpu.get("books", 0),
        cpu.get("gateway", 0), cpu.get("redis", 0)))
print("cache-hit GET / database GET:        %.2fx" % (r["cached"]["ok_per_s"] / max(r["database"]["ok_per_s"], 1e-9)))
xadd = float(re.search(r"([\d.]+) requests per second", open(out + "/xadd.txt").read()).group(1))
insert = float(re.search(r"^tps = ([\d.]+)", open(out + "/insert.txt").read(), re.M).group(1))
r["storage"] = {"xadd_per_s": xadd, "insert_tx_per_s": insert}
print("storage alone: XADD %.0f/s, one INSERT per transaction %.0f/s: %.2fx" % (xadd, insert, xadd / max(insert, 1e-9)))
notes = {l.split()[0]: l.split()[1:] for l in open(out + "/pg.txt") if l.strip()}
r["postgres"] = {}
for name in ("behind", "through"):
    wal = int(notes[name + "-end"][0]) - int(notes[name + "-start"][0])
    commits = int(notes[name + "-end"][1]) - int(notes[name + "-start"][1])
    tables = dict(t.split("=") for t in notes[name + "-stats"][2:])
    r["postgres"][name] = {"wal_bytes_per_rating": wal / max(r[name]["ok"], 1), "commits": commits,
                           "ratings_per_commit": r[name]["ok"] / max(commits, 1), "updates_hot": tables}
    print("PostgreSQL, %-7s WAL %.0f bytes per rating%s, %d commits (%.1f ratings each); updates/HOT updates since start: %s" % (
        name, wal / max(r[name]["ok"], 1), " (incl. drain)" if name == "behind" else "", commits,
        r[name]["ok"] / max(commits, 1), ", ".join("%s %s" % kv for kv in tables.items())))
batches = {l.split()[0]: l.split()[1:] for l in open(out + "/batches.txt") if l.strip()}
entries = int(batches["behind-end"][0]) - int(batches["behind-start"][0])
rounds = int(batches["behind-end"][1]) - int(batches["behind-start"][1])
r["batches"] = {"entries": entries, "batches": rounds, "mean": entries / max(rounds, 1),
                "median_per_instance_recent": batches["behind-end"][2:]}
print("persister batches (run + drain): %d entries in %d batches, %.1f per batch (recent median per instance: %s)" % (
    entries, rounds, entries / max(rounds, 1), ", ".join(batches["behind-end"][2:]) or "-"))
json.dump(r, open(out + "/results.json", "w"), indent=2)
print("results: %s/results.json" % out)
PY
