#!/usr/bin/env bash
# Instructions the gateway executes per proxied request, counted by valgrind (callgrind), against
# the bare axum+hyper proxy, nginx and, optionally, another build of the gateway — in the same run,
# on the same upstream.
#
#   bench/gateway-instructions.sh                  # ~4 minutes; prints the table, writes $BENCH_OUT
#
# Why: bench/gateway-vs-nginx.sh measures time, and on these shared 2-vCPU VMs a change of a few
# percent of the gateway's CPU per request is inside its run-to-run noise even over ten rounds.
# An instruction count does not move with the neighbours, so a cut of 1 % shows as 1 %. It counts
# user space only (the kernel's TCP and scheduling are not in it), and cache misses only as
# valgrind's model simulates them (CALLGRIND_ARGS below): it tells whether the gateway's own work
# got smaller, and by how much; the wall-clock benchmark tells what that is worth — a 10 % cut of
# string formatting was not worth a visible microsecond (docs/BENCHMARKS.md).
#
# Each target runs alone under callgrind (which serialises its threads), gets WARMUP of wrk, then
# its counters are zeroed, wrk runs DURATION at CONNECTIONS, and the counters are dumped: total
# instructions of every thread (log writer and metrics upkeep included) / requests wrk completed.
# The gateway runs with `bookstore up`'s gateway environment, one serving thread, and the rate
# limiter on with a limit wrk cannot reach, as in bench/gateway-vs-nginx.sh.
#
# Knobs: BOOKSTORE_BIN (else builds the release binary), BASELINE_BIN (a second gateway build to
# compare), BARE_PROXY=0 (skip the bare proxy; BARE_PROXY_BIN=<path> uses a built one),
# NGINX_TARGET=0 (skip nginx: one worker, configured as in bench/gateway-vs-nginx.sh),
# DURATION=15s, WARMUP=3s, CONNECTIONS=8, BENCH_OUT=<dir> (dumps, wrk outputs, per-layer reports;
# a new /tmp directory by default), CALLGRIND_ARGS (more callgrind options: `--cache-sim=yes` adds
# simulated cache misses per request to the table — first-level and last-level, data and
# instructions, for valgrind's model of a cache, not this machine's).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-8}
BARE_PROXY=${BARE_PROXY:-1}
NGINX_TARGET=${NGINX_TARGET:-1}

missing=()
for tool in valgrind wrk curl python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ "$NGINX_TARGET" == 1 && ! -x "$NGINX" ]] && missing+=(nginx-light)
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null ||
    die "missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]})"
  say "installing ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
scripts/setup.sh
bookstore_binary

work=$(mktemp -d /tmp/bench-gateway-instructions.XXXXXX)
chmod 755 "$work" # PostgreSQL runs as the postgres user when this runs as root
out=${BENCH_OUT:-$(mktemp -d /tmp/gateway-instructions.XXXXXX)}
mkdir -p "$out"
target_pid=""
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  [[ -n "$target_pid" ]] && kill -KILL "$target_pid" 2>/dev/null
  stop_platform
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

say "starting the platform (one books instance)"
# `up` passes BOOKSTORE_GATEWAY__X to its gateway as BOOKSTORE_X; the gateways measured here are
# started with that gateway's environment.
env BOOKSTORE_GATEWAY__THREADS=1 BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED=true \
  BOOKSTORE_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND=1000000000 \
  BOOKSTORE_GATEWAY__RATE_LIMIT__BURST=1000000000 "$BOOKSTORE" up --dir "$work/platform" --gateway-port 0 --registry-port 0 --quiet --instances 1 \
  >"$work/up.out" 2>&1 &
up_pid=$!
wait_until_up "$work/platform" "$work/up.out"
books_url=$(process_field "$work/platform" books url)
gateway_pid=$(process_field "$work/platform" gateway pid)
path="/api/books/$(first_book_id "$books_url")"
expected=$(curl -sf "$books_url$path")
mapfile -d '' gateway_environ <"/proc/$gateway_pid/environ"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# measure NAME COMMAND...: runs COMMAND (which serves on $port) under callgrind, in the
# environment `launch_env` (given, it is the whole environment); prints "NAME requests instructions".
launch_env=()
valgrind=$(command -v valgrind)
measure() {
  local name=$1; shift
  local environment=(env)
  ((${#launch_env[@]})) && environment=(env -i "${launch_env[@]}")
  # shellcheck disable=SC2086 # CALLGRIND_ARGS is a list of options
  "${environment[@]}" "$valgrind" --tool=callgrind ${CALLGRIND_ARGS:-} \
    --callgrind-out-file="$out/$name.cg" "$@" \
    >"$out/$name.log" 2>&1 &
  target_pid=$!
  local url="http://127.0.0.1:$port"
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "$url$path" && break
    kill -0 "$target_pid" 2>/dev/null || die "$name exited (log: $out/$name.log)"
    sleep 0.2
  done
  [[ $(curl -sf "$url$path") == "$expected" ]] || die "$name answered a different body for $path"
  wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "$url$path" >/dev/null
  callgrind_control -z "$target_pid" >/dev/null 2>&1
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$url$path" >"$out/$name.wrk"
  callgrind_control -d measured "$target_pid" >/dev/null 2>&1
  kill -TERM "$target_pid" 2>/dev/null
  wait "$target_pid" 2>/dev/null || true
  target_pid=""
  local requests non2xx instructions
  requests=$(awk '/requests in/ {print $1}' "$out/$name.wrk")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$out/$name.wrk")
  [[ -z "$non2xx" ]] || die "$name answered $non2xx non-2xx responses (see $out/$name.wrk)"
  # The dump with the counters of the measured run (the first dump after zeroing).
  # Every event callgrind counted (Ir alone, or with --cache-sim=yes the misses too), as name=total.
  instructions=$(awk '/^events:/ {for (i = 2; i <= NF; i++) name[i] = $i}
    /^summary:/ {for (i = 2; i <= NF; i++) printf "%s%s=%s", (i > 2 ? "," : ""), name[i], $i}' "$out/$name.cg.1")
  python3 bench/callgrind_report.py "$out/$name.cg.1" "$requests" >"$out/$name.layers.txt"
  echo "$name $requests $instructions"
}

gateway_under_callgrind() { # name binary
  port=$(free_port)
  launch_env=("${gateway_environ[@]}" BOOKSTORE_HTTP__LISTEN="127.0.0.1:$port"
              BOOKSTORE_HTTP__PORT_FILE="$work/$1.addr")
  measure "$1" "$2" gateway
  launch_env=()
}

results=()
say "gateway under callgrind ($WARMUP warm-up, $DURATION measured, $CONNECTIONS connections)"
results+=("$(gateway_under_callgrind gateway "$BOOKSTORE")")
if [[ -n "${BASELINE_BIN:-}" ]]; then
  say "baseline gateway ($BASELINE_BIN) under callgrind"
  results+=("$(gateway_under_callgrind baseline "$BASELINE_BIN")")
fi
if [[ "$BARE_PROXY" == 1 ]]; then
  bare_proxy_binary
  port=$(free_port)
  say "bare axum+hyper proxy under callgrind"
  results+=("$(measure bare "$BARE_BIN" "127.0.0.1:$port" "${books_url#http://}")")
fi

if [[ "$NGINX_TARGET" == 1 ]]; then
  # nginx as in bench/gateway-vs-nginx.sh (one worker, upstream keep-alive pool, no access log),
  # here as one process (`master_process off`) so callgrind sees the worker.
  port=$(free_port)
  dir="$work/nginx"
  nginx_conf "$dir" "$port" "${books_url#http://}" 1
  say "nginx (one worker) under callgrind"
  results+=("$(measure nginx "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off; master_process off;')")
fi

printf '%s\n' "${results[@]}" | python3 bench/callgrind_report.py table "$path" "$out/results.json"
say "per-layer reports: $out/*.layers.txt (bench/callgrind_report.py DUMP REQUESTS --match NAME)"
