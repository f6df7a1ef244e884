#!/usr/bin/env bash
# Runs every check and test: formatting, lints, the Postman collection with newman against a live
# `bookstore up`, then the Rust test suite (unit, integration on real PostgreSQL, end to end).
# Installs what is missing first. Quiet on success, loud on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test

target=${CARGO_TARGET_DIR:-target}
step() { echo "==> $*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build"
cargo build --workspace --quiet --bin bookstore

step "Postman collection (newman) against a live bookstore up"
scripts/newman.sh "$target/debug/bookstore"

step "test suite"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --profile "${NEXTEST_PROFILE:-default}"
else
  cargo test --workspace --no-fail-fast
fi
