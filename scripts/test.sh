#!/usr/bin/env bash
# Runs every check and test: formatting, lints, the Postman collection with newman against a live
# `bookstore up`, then the Rust test suite (unit, integration on real PostgreSQL, end to end).
# Installs what is missing first. Quiet on success, loud on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
# Each step's wall time, printed when the script exits (pass or fail), so a slow CI run says where
# its minutes went.
timings=() current="" since=$SECONDS
step() {
  [[ -n $current ]] && timings+=("$((SECONDS - since)) s  $current")
  current=$*
  since=$SECONDS
  [[ -n $current ]] && echo "==> $*"
  return 0
}
report_times() {
  step ""
  echo "==> wall time per step:"
  printf '    %s\n' "${timings[@]}"
}
cleanup=(report_times)
trap 'for action in "${cleanup[@]}"; do $action; done' EXIT

step "install what is missing (scripts/setup.sh)"
scripts/setup.sh --test

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build"
cargo build --workspace --quiet --bin bookstore

# The tests' scratch — every platform directory, PostgreSQL cluster and backup they make — in
# memory when the machine has a tmpfs with room, unless TMPDIR is set: on these machines' disk a
# platform takes ~3.5 s to start, most of it waiting on the file system's journal (initdb, CREATE
# DATABASE, the last test's directory being deleted), and ~1.6 s in memory. docs/TESTING.md.
memory_scratch() {
  local shm=/dev/shm available
  [[ -d $shm && -w $shm && $(stat -f -c %T "$shm") == tmpfs ]] || return 1
  available=$(df -Pk "$shm" | awk 'NR == 2 { print $4 }')
  ((available >= 4 * 1024 * 1024)) || return 1
  mktemp -d "$shm/bookstore-tests.XXXXXX"
}
if [[ -z "${TMPDIR:-}" ]] && scratch=$(memory_scratch); then
  # The database user (when run as root) must be able to pass through to the directories in it.
  chmod 711 "$scratch"
  remove_scratch() { rm -rf "$scratch"; }
  cleanup=(remove_scratch "${cleanup[@]}")
  export TMPDIR=$scratch
  echo "    test scratch in memory: $scratch"
fi

step "Postman collection (newman) against a live bookstore up"
scripts/newman.sh "$target/debug/bookstore"

step "test suite"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --profile "${NEXTEST_PROFILE:-default}"
else
  cargo test --workspace --no-fail-fast
fi
