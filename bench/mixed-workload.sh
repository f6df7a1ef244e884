#!/usr/bin/env bash
# The mixed workload and the chaos availability figures (docs/BENCHMARKS.md, docs/LOADGEN.md): a
# release `bookstore up` in a throw-away directory, then
#   1. `bookstore loadgen` open model at RATE requests/s for DURATION, invariants checked;
#   2. `bookstore loadgen` closed model with CLIENTS clients for DURATION (the throughput ceiling);
#   3. `bookstore chaos SCENARIOS` with CHAOS_DURATION per scenario at CHAOS_RATE requests/s.
#
#   bench/mixed-workload.sh
#   bench/chaos-cluster.sh     # only the four database scenarios, on the 5-member cluster
#
# Knobs (environment): RATE=100, CLIENTS=16, DURATION=60s, CUSTOMERS=20, CHAOS_DURATION=60s,
# CHAOS_RATE=30, SCENARIOS=all (or a comma-separated list), SKIP_CHAOS=1, SKIP_LOAD=1 (chaos only),
# PG_NODES=5 (1: one plain PostgreSQL; the database scenarios are then "not available"),
# BOOKSTORE_BIN=<path> (else the release binary is built), BENCH_OUT=<dir> (JSON reports; a new
# /tmp directory by default).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-100}
CLIENTS=${CLIENTS:-16}
DURATION=${DURATION:-60s}
CUSTOMERS=${CUSTOMERS:-20}
CHAOS_DURATION=${CHAOS_DURATION:-60s}
CHAOS_RATE=${CHAOS_RATE:-30}
SCENARIOS=${SCENARIOS:-all}
PG_NODES=${PG_NODES:-5}
say() { echo "bench: $*" >&2; }

scripts/setup.sh
if [[ -n "${BOOKSTORE_BIN:-}" ]]; then
  BOOKSTORE=$BOOKSTORE_BIN
else
  say "building the release binary"
  cargo build --release --quiet --bin bookstore
  target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  BOOKSTORE="$target_dir/release/bookstore"
fi

out=${BENCH_OUT:-$(mktemp -d /tmp/mixed-bench.XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/mixed-bench-work.XXXXXX)
chmod 755 "$work"
up_pid=""
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  if [[ -n "$up_pid" ]]; then
    kill -TERM "$up_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$up_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

say "starting the platform in $work"
"$BOOKSTORE" up --dir "$work" --gateway-port 0 --registry-port 0 --pg-nodes "$PG_NODES" --quiet >"$out/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 180); do
  grep -q '"ready": true' "$work/state.json" 2>/dev/null && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$out/up.log"; exit 1; }
  sleep 1
done

if [[ -z "${SKIP_LOAD:-}" ]]; then
  say "open model: $RATE requests/s for $DURATION"
  "$BOOKSTORE" loadgen --dir "$work" --rate "$RATE" --duration "$DURATION" --customers "$CUSTOMERS" --check --quiet | tee "$out/open.txt"
  say "closed model: $CLIENTS clients for $DURATION"
  "$BOOKSTORE" loadgen --dir "$work" --concurrency "$CLIENTS" --duration "$DURATION" --customers "$CUSTOMERS" --check --quiet | tee "$out/closed.txt"
fi
if [[ -z "${SKIP_CHAOS:-}" ]]; then
  say "chaos: $SCENARIOS, $CHAOS_DURATION each at $CHAOS_RATE requests/s"
  "$BOOKSTORE" chaos "$SCENARIOS" --dir "$work" --duration "$CHAOS_DURATION" --rate "$CHAOS_RATE" --quiet | tee "$out/chaos.txt" || true
  cp "$work"/reports/*.json "$out/" 2>/dev/null || true
fi
say "reports in $out"
