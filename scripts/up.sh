#!/usr/bin/env bash
# Starts the whole platform on loopback: installs what is missing, builds, runs `bookstore up`.
# Extra arguments go to `bookstore up` (see `bookstore up --help`). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet --bin bookstore
exec "${CARGO_TARGET_DIR:-target}/release/bookstore" up "$@"
