#!/usr/bin/env bash
# PostgreSQL failover benchmark on the real `bookstore up` cluster (1 primary + 4 replicas):
# write unavailability for a crashed postmaster (Patroni alive) and for a whole dead node (Patroni
# too), eventual-read unavailability, and commit throughput strong (remote_apply) vs eventual
# (local). Each figure is printed by a test of tests/e2e/cluster.rs; run them one at a time.
# Usage: bench/cluster.sh   (results go to docs/BENCHMARKS.md, "PostgreSQL failover")
set -euo pipefail
cd "$(dirname "$0")/.."
for test in \
  cluster::the_primary_dying_during_top_ups \
  cluster::the_whole_primary_node_dying \
  cluster::commit_throughput_strong_vs_eventual; do
  cargo nextest run --test e2e "$test" --run-ignored all --no-capture 2>&1 |
    grep -E '^(failover|commit throughput)' || { echo "bench/cluster.sh: $test failed" >&2; exit 1; }
done
