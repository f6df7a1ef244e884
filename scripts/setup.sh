#!/usr/bin/env bash
# Installs what the platform and its tests need and is missing on this machine (Debian with Rust and
# the PostgreSQL 15 server binaries; Redis is installed here when missing). Safe to run again: it only installs what is missing.
#   scripts/setup.sh          what `bookstore up` needs
#   scripts/setup.sh --test   plus what the test suite needs (newman for the Postman collection)
set -euo pipefail

want_test=false
[[ "${1:-}" == "--test" ]] && want_test=true

say() { echo "setup: $*" >&2; }
die() { echo "setup: $*" >&2; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else die "installing needs root: run as root, or run: $*"; fi
}

apt_updated=false
apt_install() {
  command -v apt-get >/dev/null || die "missing $*, and this is not a Debian machine: install $* yourself"
  if ! $apt_updated; then
    say "apt-get update"
    as_root apt-get update -qq >/dev/null
    apt_updated=true
  fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v cargo >/dev/null || die "cargo is missing: install Rust from https://rustup.rs, then run this again"

pg_bin=""
for dir in "${BOOKSTORE_PG_BIN:-}" /usr/lib/postgresql/17/bin /usr/lib/postgresql/16/bin /usr/lib/postgresql/15/bin; do
  [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/postgres" ]] && { pg_bin=$dir; break; }
done
if [[ -z "$pg_bin" ]] && ! command -v initdb >/dev/null; then
  apt_install postgresql-15
fi
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
  say "creating the unprivileged 'postgres' OS user the database runs as"
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# The cache ring's nodes (`bookstore up` starts three; tests start their own).
if ! command -v redis-server >/dev/null && [[ ! -x /usr/bin/redis-server ]]; then
  apt_install redis-server
fi

# The highly available PostgreSQL cluster `bookstore up` runs by default: etcd (the DCS, etcdctl for
# health checks) and Patroni, which runs under Debian's /usr/bin/python3.
if ! command -v etcd >/dev/null; then
  apt_install etcd-server
fi
if ! command -v etcdctl >/dev/null; then
  apt_install etcd-client
fi
if ! command -v patroni >/dev/null && [[ ! -x /usr/bin/patroni ]]; then
  apt_install patroni
fi

# Monitoring that `bookstore up` starts beside the platform (skipped with --no-monitoring):
# Prometheus (finds every instance through the registry) and Alertmanager (receives its alerts).
command -v prometheus >/dev/null || apt_install prometheus
command -v prometheus-alertmanager >/dev/null || apt_install prometheus-alertmanager

# `bookstore chaos skew-clock-*` runs one instance under libfaketime.
if [[ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 && ! -e /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 ]]; then
  apt_install faketime
fi

# `bookstore chaos partition-primary` cuts a cluster member off by process: a cgroup (v2) and
# nftables rules matching it (`nft`), and `ss` to destroy the connections made before the cut.
command -v nft >/dev/null || [[ -x /usr/sbin/nft ]] || apt_install nftables
command -v ss >/dev/null || [[ -x /usr/bin/ss ]] || [[ -x /usr/sbin/ss ]] || apt_install iproute2

if $want_test; then
  command -v npm >/dev/null || apt_install nodejs npm
  if ! command -v newman >/dev/null; then
    say "installing newman (runs the Postman collection)"
    as_root npm install -g --no-audit --no-fund --loglevel=error newman@6 >/dev/null
  fi
  command -v promtool >/dev/null || apt_install prometheus  # promtool: the alert rules' unit tests
  if ! command -v openapi-spec-validator >/dev/null; then
    say "installing openapi-spec-validator (checks gateway/api/openapi.json)"
    python3 -m pip install -q openapi-spec-validator >/dev/null
  fi
  # The deployment files (tests/e2e/deploy.rs): the compose file parses, the k8s manifests validate.
  command -v docker-compose >/dev/null || apt_install docker-compose
  if ! command -v kubernetes-validate >/dev/null; then
    say "installing kubernetes-validate (offline schema check of deploy/k8s)"
    python3 -m pip install -q kubernetes-validate >/dev/null
  fi
fi
