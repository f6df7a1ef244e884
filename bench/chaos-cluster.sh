#!/usr/bin/env bash
# The four database chaos scenarios in full (docs/BENCHMARKS.md, docs/LOADGEN.md): a release
# `bookstore up` with the 5-member Patroni cluster, then `bookstore chaos kill-replica,
# kill-two-replicas,kill-primary,partition-primary` at CHAOS_RATE requests/s for CHAOS_DURATION each
# (the partition holds until Patroni has failed over, ~ttl + loop_wait). Needs root (the partition
# uses a cgroup and nftables; scripts/setup.sh installs nftables and iproute2). ~6 minutes.
#
#   bench/chaos-cluster.sh
#
# Knobs as bench/mixed-workload.sh (CHAOS_DURATION=60s, CHAOS_RATE=30, BOOKSTORE_BIN, BENCH_OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIOS=${SCENARIOS:-kill-replica,kill-two-replicas,kill-primary,partition-primary} \
  SKIP_LOAD=1 PG_NODES=5 exec bench/mixed-workload.sh
