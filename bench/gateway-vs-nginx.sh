#!/usr/bin/env bash
# The gateway against nginx as a reverse proxy in front of the SAME upstream, driven by the same
# client in the same run (issue 3, "Benchmark"; results and setup in docs/BENCHMARKS.md).
#
#   bench/gateway-vs-nginx.sh
#
# Starts a real `bookstore up --instances 1` (PostgreSQL, registry, ONE books instance, orders, the
# gateway with auth, breakers, retry budget, rate limit, shedding and metrics on) on free loopback
# ports in a temporary directory, plus two nginx reverse proxies in front of that same books
# instance (worker_processes 1 and auto). Then, for ROUNDS rounds, interleaved, each target —
# direct books, nginx (1 worker), nginx (auto), gateway — gets a warm-up wrk run and a measured one
# on `GET /api/books/<id>`. Prints every run, the median of the rounds, throughput ratios and added
# p50/p99 latency (target minus direct), and writes everything as JSON to $BENCH_OUT/results.json.
# Everything it started is stopped on exit, Ctrl-C included.
#
# Knobs (environment):
#   ROUNDS=5  DURATION=15s  WARMUP=3s  THREADS=2  CONNECTIONS=64
#   LIGHT_DURATION=10s        after each loaded run, one more at ONE connection (wrk -t1 -c1): the
#                             latency a request pays when nothing queues; 0 skips it
#   BENCH_RATE_LIMIT=raised   the gateway's rate limiter stays on with a limit wrk cannot reach
#                             (1e9 requests/s, burst 1e9); `off` disables it instead
#                             (BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED=false)
#   BENCH_PERF=1              after the rounds, one more measured run of the gateway and of nginx
#                             (1 worker) under `perf stat` (software counters; system calls by kind where tracepoints are readable), if perf works
#   BENCH_PROFILE=1          also `perf record` the gateway during one more run (top DSOs and
#                             symbols in $BENCH_OUT/raw/profile-gateway.txt)
#   BENCH_PROFILE_CALLS=dwarf  with BENCH_PROFILE=1: unwind with DWARF (a release build has no
#                             frame pointers) and add the inclusive share of each function
#                             (children) to the profile; default `fp` (frame pointers, cheap)
#   BOOKSTORE_BIN=<path>      use this bookstore binary instead of building the release one
#   BARE_PROXY=1              also measure gateway/examples/bare_proxy.rs (built here, release):
#                             the gateway's HTTP stack — axum server, hyper_util client, one
#                             current-thread runtime — forwarding to the same books with nothing
#                             else: the floor the gateway's own work sits on (BARE_PROXY_BIN=<path>
#                             uses a built one)
#   BASELINE_BIN=<path>       also measure a second gateway from this binary (e.g. the last
#                             release), started with the first gateway's environment, same registry
#                             and upstream: a before/after comparison within one run
#   BASELINE_ENV='K=V ...'    extra environment for that second gateway (an ablation: e.g.
#                             RUST_LOG=warn); without BASELINE_BIN it runs BOOKSTORE_BIN
#   NGINX_ACCESS_LOG=1        also measure nginx (1 worker) writing a JSON access line per request
#                             (escape=json, buffered 64 KiB, flushed every second) to a file, as
#                             the gateway writes its access line: nginx as one would deploy it
#   PIN_PROXY=1               give the proxies a core of their own: every proxy (the gateway with one
#                             serving thread, both nginx) on CPU 1, everything else — books,
#                             PostgreSQL, Redis, the registry, wrk — on CPU 0 (taskset); what the
#                             proxies cost then shows as their core's load and as latency, not as
#                             CPU taken from the upstream. Needs 2+ CPUs
#   BENCH_KEEP_LOGS=1         keep every process's log whole; by default each wrk run starts with
#                             the logs under the work directory emptied, so the lines the run
#                             writes (books' and the gateway's access lines, ~10 MB/s) go into
#                             page cache freed by the last run, as on a server whose logs are
#                             rotated: on this VM a page written for the first time costs the host
#                             a fault, 5-10 x the system time of a reused one (docs/BENCHMARKS.md)
#   BENCH_OUT=<dir>           where results.json and the raw wrk outputs go (default: a new /tmp dir)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
LIGHT_DURATION=${LIGHT_DURATION:-10s}
BENCH_RATE_LIMIT=${BENCH_RATE_LIMIT:-raised}
BENCH_PERF=${BENCH_PERF:-1}
PIN_PROXY=${PIN_PROXY:-0}
export BENCH_KEEP_LOGS=${BENCH_KEEP_LOGS:-0}

source bench/lib.sh

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else die "installing needs root: run as root, or run: $*"; fi
}

# --- what the benchmark needs ------------------------------------------------------------------
missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
[[ "$PIN_PROXY" == 1 ]] && ! command -v taskset >/dev/null && missing+=(util-linux)
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "missing ${missing[*]}, and this is not a Debian machine: install them yourself"
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && ! apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    missing=("${missing[@]/nginx-light/nginx}")
  fi
  say "installing ${missing[*]}"
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
scripts/setup.sh

bookstore_binary
[[ -x "$BOOKSTORE" ]] || die "no binary at $BOOKSTORE"

# --- start everything, stop everything on exit -------------------------------------------------
work=$(mktemp -d /tmp/bench-gateway-vs-nginx.XXXXXX)
chmod 755 "$work" # as root, PostgreSQL runs as the postgres user and must reach its data below it
out=${BENCH_OUT:-$(mktemp -d /tmp/gateway-vs-nginx-results.XXXXXX)}
mkdir -p "$out/raw"
up_pid=""
nginx_pids=()
wrk_pid=""

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  [[ -n "$wrk_pid" ]] && kill "$wrk_pid" 2>/dev/null || true
  for pid in "${nginx_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  if [[ -n "$up_pid" ]]; then
    # `up` stops its children in order (gateway, services, registry, PostgreSQL) on SIGTERM.
    kill -TERM "$up_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$up_pid" 2>/dev/null || true
  fi
  for pid in "${nginx_pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
say "starting the platform (one books instance) in $work (load average before: $load_before)"
gateway_env=(BOOKSTORE_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND=1000000000
             BOOKSTORE_GATEWAY__RATE_LIMIT__BURST=1000000000)
[[ "$BENCH_RATE_LIMIT" == off ]] && gateway_env=(BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED=false)
# PIN_PROXY=1: the platform (and so books, PostgreSQL, Redis) on CPU 0, the proxies on CPU 1.
on_upstream_cpu=() on_proxy_cpu=()
if [[ "$PIN_PROXY" == 1 ]]; then
  (($(nproc) >= 2)) || die "PIN_PROXY=1 needs at least 2 CPUs"
  on_upstream_cpu=(taskset -c 0) on_proxy_cpu=(taskset -c 1)
  gateway_env+=(BOOKSTORE_GATEWAY__THREADS=1)
fi
env "${gateway_env[@]}" "${on_upstream_cpu[@]}" "$BOOKSTORE" up --dir "$work/platform" --gateway-port 0 --registry-port 0 \
  --quiet --instances 1 >"$work/up.out" 2>&1 &
up_pid=$!
wait_until_up "$work/platform" "$work/up.out"
gateway_url=$(json_field "$work/platform/state.json" gateway_url)
books_url=$(process_field "$work/platform" books url)
books_pid=$(process_field "$work/platform" books pid)
gateway_pid=$(process_field "$work/platform" gateway pid)
postgres_pid=$(process_field "$work/platform" postgres pid)
pin_proxy() { # pid: every thread of it onto the proxies' CPU
  [[ "$PIN_PROXY" == 1 ]] && taskset -a -p -c 1 "$1" >/dev/null
  return 0
}
pin_proxy "$gateway_pid"
books_addr=${books_url#http://}

book_id=$(first_book_id "$books_url")
path="/api/books/$book_id"

start_nginx() { # name workers [log] -> sets nginx_url and nginx_pid
  local name=$1 workers=$2 log=${3:-} port dir access="access_log off;"
  port=$(free_port)
  dir="$work/$name"
  if [[ -n "$log" ]]; then
    # The gateway's access line's fields: time, level, status, latency, method, path, request id.
    access="log_format line escape=json '{\"timestamp\":\"\$time_iso8601\",\"level\":\"INFO\",\"message\":\"request served\",\"status\":\$status,\"latency_ms\":\$request_time,\"span\":{\"method\":\"\$request_method\",\"path\":\"\$uri\",\"request_id\":\"\$request_id\"}}';
    access_log $dir/logs/access.log line buffer=64k flush=1s;"
  fi
  nginx_conf "$dir" "$port" "$books_addr" "$workers" "$access"
  "${on_proxy_cpu[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/logs/stdout.log" 2>&1 &
  nginx_pid=$!
  nginx_pids+=("$nginx_pid")
  nginx_url="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$nginx_url$path" && return
    sleep 0.1
  done
  cat "$dir/logs/error.log" "$dir/logs/stdout.log" >&2
  die "nginx ($name) did not answer"
}
start_nginx nginx1 1
nginx1_url=$nginx_url nginx1_pid=$nginx_pid
start_nginx nginxauto auto
nginxauto_url=$nginx_url nginxauto_pid=$nginx_pid

targets=(direct nginx1 nginxauto gateway)
declare -A url=([direct]=$books_url [nginx1]=$nginx1_url [nginxauto]=$nginxauto_url [gateway]=$gateway_url)
declare -A proxy_pid=([direct]="" [nginx1]=$nginx1_pid [nginxauto]=$nginxauto_pid [gateway]=$gateway_pid)
if [[ "${NGINX_ACCESS_LOG:-}" == 1 ]]; then
  start_nginx nginxlog 1 log
  targets+=(nginxlog) url[nginxlog]=$nginx_url proxy_pid[nginxlog]=$nginx_pid
fi

# add_target <name> <pid> <url>: one more proxy to measure, stopped on exit with the nginx
# instances; waits (at most 10 s) until it answers.
add_target() {
  nginx_pids+=("$2")
  targets+=("$1")
  url[$1]=$3
  proxy_pid[$1]=$2
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$3$path" && return
    sleep 0.1
  done
}

if [[ -n "${BASELINE_BIN:-}${BASELINE_ENV:-}" ]]; then
  # The same settings as up's gateway (its environment, plus BASELINE_ENV), on a port of its own.
  port=$(free_port)
  mapfile -d '' gateway_environ <"/proc/$gateway_pid/environ"
  read -r -a baseline_env <<<"${BASELINE_ENV:-}"
  env -i "${gateway_environ[@]}" "${baseline_env[@]}" BOOKSTORE_HTTP__LISTEN="127.0.0.1:$port" \
    BOOKSTORE_HTTP__PORT_FILE="$work/baseline.addr" "${BASELINE_BIN:-$BOOKSTORE}" gateway >"$work/baseline.log" 2>&1 &
  baseline_pid=$!
  pin_proxy "$baseline_pid"
  add_target baseline "$baseline_pid" "http://127.0.0.1:$port"
fi

if [[ "${BARE_PROXY:-}" == 1 ]]; then
  bare_proxy_binary
  port=$(free_port)
  "${on_proxy_cpu[@]}" "$BARE_BIN" "127.0.0.1:$port" "$books_addr" >"$work/bare.log" 2>&1 &
  add_target bare "$!" "http://127.0.0.1:$port"
fi

# Every target must answer the same 200 before anything is measured.
expected=$(curl -sf "$books_url$path")
for t in "${targets[@]}"; do
  got=$(curl -sf "${url[$t]}$path") || die "$t answered an error for $path"
  [[ "$got" == "$expected" ]] || die "$t answered a different body for $path"
done

# CPU time (clock ticks) of a process tree: every live process's own time (all threads) plus what its
# exited children used (cutime/cstime), so PostgreSQL backends that come and go are still counted.
tree_pids() {
  local pid=$1 child
  echo "$pid"
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do tree_pids "$child"; done
}
cpu_ticks() {
  local total=0 pid stat
  [[ -z "$1" ]] && { echo 0; return; }
  for pid in $(tree_pids "$1"); do
    stat=$(cat /proc/"$pid"/stat 2>/dev/null) || continue
    stat=${stat##*) } # the command name (field 2) may hold spaces
    set -- $stat      # now $12..$15 are utime, stime, cutime, cstime
    total=$((total + ${12} + ${13} + ${14} + ${15}))
  done
  echo "$total"
}
self_ticks() { # what this shell's waited-for children used: wrk, mostly
  local stat
  stat=$(cat /proc/$$/stat)
  stat=${stat##*) }
  set -- $stat
  echo $((${14} + ${15}))
}
busy_ticks() { # every CPU's busy time, from /proc/stat
  local cpu user nice system idle iowait irq softirq steal rest
  read -r cpu user nice system idle iowait irq softirq steal rest </proc/stat
  echo $((user + nice + system + irq + softirq + steal))
}

empty_logs() { # see BENCH_KEEP_LOGS
  [[ "$BENCH_KEEP_LOGS" == 1 ]] || find "$work" -name '*.log' -type f -exec truncate -s 0 {} +
}

run_wrk() { # target duration outfile [threads connections]
  local t=$1 d=$2 f=$3 threads=${4:-$THREADS} conns=${5:-$CONNECTIONS} p0 u0 g0 c0 b0 p1 u1 g1 c1 b1
  empty_logs
  p0=$(cpu_ticks "${proxy_pid[$t]}"); u0=$(cpu_ticks "$books_pid"); g0=$(cpu_ticks "$postgres_pid")
  c0=$(self_ticks); b0=$(busy_ticks)
  "${on_upstream_cpu[@]}" wrk -t"$threads" -c"$conns" -d"$d" --latency "${url[$t]}$path" >"$f" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || die "wrk failed against $t: $(cat "$f")"
  wrk_pid=""
  b1=$(busy_ticks); c1=$(self_ticks)
  p1=$(cpu_ticks "${proxy_pid[$t]}"); u1=$(cpu_ticks "$books_pid"); g1=$(cpu_ticks "$postgres_pid")
  echo "cpu_ticks proxy=$((p1 - p0)) books=$((u1 - u0)) postgres=$((g1 - g0)) client=$((c1 - c0)) busy=$((b1 - b0)) hz=$(getconf CLK_TCK)" >>"$f"
}

say "targets: direct $books_url, nginx1 $nginx1_url, nginxauto $nginxauto_url, gateway $gateway_url; GET $path"
for r in $(seq 1 "$ROUNDS"); do
  for t in "${targets[@]}"; do
    say "round $r/$ROUNDS: $t (warm-up $WARMUP, then $DURATION; then $LIGHT_DURATION at one connection)"
    run_wrk "$t" "$WARMUP" "$out/raw/warmup-$r-$t.txt"
    run_wrk "$t" "$DURATION" "$out/raw/round-$r-$t.txt"
    if [[ "$LIGHT_DURATION" != 0 ]]; then
      run_wrk "$t" "$LIGHT_DURATION" "$out/raw/light-$r-$t.txt" 1 1
    fi
  done
done

if [[ "$BENCH_PERF" == 1 ]] && command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
  # System calls per request, by kind, where the tracepoints are readable: where the kernel half
  # of a proxy's CPU comes from.
  events=task-clock,context-switches,cpu-migrations,page-faults
  for call in raw_syscalls:sys_enter syscalls:sys_enter_{read,recvfrom,write,writev,sendto,sendmsg,recvmsg,epoll_wait,epoll_pwait,epoll_ctl,futex,sched_yield,io_uring_enter}; do
    perf stat -e "$call" true >/dev/null 2>&1 && events+=",$call"
  done
  for t in gateway nginx1; do
    say "perf stat: $t"
    pids=$(tree_pids "${proxy_pid[$t]}" | paste -sd,)
    perf stat -e "$events" -p "$pids" \
      -o "$out/raw/perf-$t.txt" -- sleep 10 &
    perf_pid=$!
    run_wrk "$t" 12s "$out/raw/perf-wrk-$t.txt"
    wait "$perf_pid" || true
  done
fi

if [[ "${BENCH_PROFILE:-0}" == 1 ]] && command -v perf >/dev/null; then
  say "perf record: gateway (profile in $out/raw/profile-gateway.txt)"
  if [[ "${BENCH_PROFILE_CALLS:-fp}" == dwarf ]]; then
    calls=(-F 499 --call-graph dwarf,16384)
  else
    calls=(-F 1999 -g)
  fi
  perf record -q -e cpu-clock "${calls[@]}" -p "$gateway_pid" -o "$out/raw/perf-gateway.data" -- sleep 10 \
    >/dev/null 2>&1 &
  perf_pid=$!
  run_wrk gateway 12s "$out/raw/profile-wrk-gateway.txt"
  wait "$perf_pid" || true
  # Self time by binary, then by function (sed, not head: no SIGPIPE under pipefail).
  for sort in dso symbol; do
    perf report -i "$out/raw/perf-gateway.data" --no-children --sort "$sort" -g none --stdio 2>/dev/null |
      grep -v -e '^#' -e '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | cut -c1-160 | sed -n '1,60p'
    echo
  done >"$out/raw/profile-gateway.txt"
  if [[ "${BENCH_PROFILE_CALLS:-fp}" == dwarf ]]; then
    echo "inclusive (children), the gateway's own code and the crates it calls:" >>"$out/raw/profile-gateway.txt"
    perf report -i "$out/raw/perf-gateway.data" --children --sort symbol -g none --stdio 2>/dev/null |
      grep -v -e '^#' -e '^$' | cut -c1-200 | sed -n '1,150p' >>"$out/raw/profile-gateway.txt"
  fi
fi

# --- report -----------------------------------------------------------------------------------
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
ci_state="no CI log"
[[ -f /tmp/ci-run.log ]] && { grep -qi '^exit' /tmp/ci-run.log && ci_state="finished ($(grep -i '^exit' /tmp/ci-run.log | tail -1))" || ci_state="STILL RUNNING"; }
python3 - "$out" "$ROUNDS" "$DURATION" "$WARMUP" "$THREADS" "$CONNECTIONS" "$LIGHT_DURATION" "$path" \
  "$BENCH_RATE_LIMIT" "${targets[*]}" "$(nproc)" "$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)" "$(uname -r)" \
  "$("$NGINX" -v 2>&1)" "$(wrk -v 2>&1 | head -1)" "$ci_state" "$load_before" "$load_after" <<'EOF'
import json, os, re, statistics, sys

(out, rounds, duration, warmup, threads, conns, light, path, rate_limit, targets,
 nproc, cpu, kernel, nginx_version, wrk_version, ci, load_before, load_after) = sys.argv[1:]
rounds = int(rounds)
targets = targets.split()
label = {"direct": "direct (books)", "nginx1": "nginx, 1 worker", "nginxauto": "nginx, auto workers",
         "gateway": "gateway", "baseline": "gateway (baseline)", "bare": "bare axum+hyper proxy",
         "nginxlog": "nginx 1w, access log"}
raw = os.path.join(out, "raw")

def ms(value):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]

def parse(file):
    text = open(file).read()
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
         "p50_ms": ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),
         "p99_ms": ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)),
         "requests": int(re.search(r"(\d+) requests in", text).group(1))}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = sum(map(int, m.groups())) if m else 0
    m = re.search(r"cpu_ticks proxy=(-?\d+) books=(-?\d+) postgres=(-?\d+) client=(-?\d+) "
                  r"busy=(-?\d+) hz=(\d+)", text)
    ticks = dict(zip(["proxy", "books", "postgres", "client", "busy"], map(int, m.groups()[:5])))
    hz = int(m.group(6))
    seconds = r["requests"] / r["rps"]
    for name in ["proxy", "books", "postgres", "client"]:
        # CPU microseconds that process tree spent per request during the run.
        r[f"cpu_us_per_req_{name}"] = ticks[name] / hz * 1e6 / r["requests"]
    # CPUs busy on the whole machine, and the part no process of the benchmark accounts for (idle
    # platform processes, kernel threads, and anything else running on the box: the noise).
    r["machine_busy_cpus"] = ticks["busy"] / hz / seconds
    r["other_busy_cpus"] = (ticks["busy"] - sum(ticks[n] for n in
                                                ["proxy", "books", "postgres", "client"])) / hz / seconds
    return r

keys = ["rps", "p50_ms", "p99_ms", "cpu_us_per_req_proxy", "cpu_us_per_req_books",
        "cpu_us_per_req_postgres", "cpu_us_per_req_client", "machine_busy_cpus", "other_busy_cpus"]

def phase(prefix):
    runs = {t: [parse(os.path.join(raw, f"{prefix}-{i}-{t}.txt")) for i in range(1, rounds + 1)]
            for t in targets}
    median = {t: {k: statistics.median(r[k] for r in runs[t]) for k in keys} for t in targets}
    errors = {t: sum(r["non_2xx"] + r["socket_errors"] for r in runs[t]) for t in targets}
    d, n1, na = median["direct"], median["nginx1"], median["nginxauto"]
    ratios = {t: {"vs_direct": median[t]["rps"] / d["rps"], "vs_nginx1": median[t]["rps"] / n1["rps"],
                  "vs_nginxauto": median[t]["rps"] / na["rps"],
                  "added_p50_ms": median[t]["p50_ms"] - d["p50_ms"],
                  "added_p99_ms": median[t]["p99_ms"] - d["p99_ms"]} for t in targets}
    # p99 is the noisiest figure: each target's p99 minus nginx1's in the same round (interleaved,
    # seconds apart), so what a round's conditions do to both cancels out.
    p99_vs_nginx1 = {t: [r["p99_ms"] - n["p99_ms"] for r, n in zip(runs[t], runs["nginx1"])]
                     for t in targets if t not in ("direct", "nginx1")}
    return {"runs": runs, "median": median, "errors": errors, "ratios": ratios,
            "p99_minus_nginx1_by_round_ms": p99_vs_nginx1}

def show(title, ph):
    print(title)
    print("  every run: requests/s, p50 ms, p99 ms, CPUs busy outside the benchmark's processes")
    for t in targets:
        cells = "  ".join(f"r{i + 1}: {r['rps']:6.0f} {r['p50_ms']:6.2f} {r['p99_ms']:6.2f} {r['other_busy_cpus']:5.2f}"
                          for i, r in enumerate(ph["runs"][t]))
        print(f"    {label[t]:<20} {cells}   errors: {ph['errors'][t]}")
    print(f"  {'median of rounds':<22} {'req/s':>7} {'×direct':>8} {'×nginx1':>8} {'×nginxauto':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8} {'+p99 ms':>8} {'proxy CPU µs/req':>17}")
    for t in targets:
        m, q = ph["median"][t], ph["ratios"][t]
        added = (f"{'—':>8} {'—':>8}" if t == "direct"
                 else f"{q['added_p50_ms']:+8.2f} {q['added_p99_ms']:+8.2f}")
        cpu_proxy = "—" if t == "direct" else f"{m['cpu_us_per_req_proxy']:.0f}"
        print(f"    {label[t]:<20} {m['rps']:7.0f} {q['vs_direct']:8.2f} {q['vs_nginx1']:8.2f} "
              f"{q['vs_nginxauto']:10.2f} {m['p50_ms']:7.2f} {m['p99_ms']:7.2f} {added} {cpu_proxy:>17}")
    print("  CPU µs/request, median (proxy / books / postgres / wrk): " + ", ".join(
        f"{t} {ph['median'][t]['cpu_us_per_req_proxy']:.0f}/{ph['median'][t]['cpu_us_per_req_books']:.0f}/"
        f"{ph['median'][t]['cpu_us_per_req_postgres']:.0f}/{ph['median'][t]['cpu_us_per_req_client']:.0f}"
        for t in targets))
    print("  p99 minus nginx1's in the same round, ms — median [min, max], rounds at or below: " + ", ".join(
        f"{t} {statistics.median(d):+.2f} [{min(d):+.2f}, {max(d):+.2f}] {sum(x <= 0 for x in d)}/{len(d)}"
        for t, d in ph["p99_minus_nginx1_by_round_ms"].items()))
    print("  proxy's CPUs busy (CPU µs/request × requests/s): " + ", ".join(
        f"{t} {ph['median'][t]['cpu_us_per_req_proxy'] * ph['median'][t]['rps'] / 1e6:.2f}"
        for t in targets if t != "direct"))
    print()

loaded = phase("round")
light_phase = phase("light") if light != "0" else None

perf = {}
for t in ["gateway", "nginx1"]:
    f = os.path.join(raw, f"perf-{t}.txt")
    if os.path.exists(f):
        text = open(f).read()
        w = parse(os.path.join(raw, f"perf-wrk-{t}.txt"))
        perf[t] = {"perf_stat": text.strip(), "wrk": w}
        m = re.search(r"([\d,.]+) msec task-clock", text)
        c = re.search(r"([\d,]+)\s+context-switches", text)
        e = re.search(r"([\d.]+) seconds time elapsed", text)
        if m and c and e:
            served = w["rps"] * float(e.group(1))
            perf[t]["cpu_us_per_req"] = float(m.group(1).replace(",", "")) * 1000 / served
            perf[t]["context_switches_per_req"] = int(c.group(1).replace(",", "")) / served
            calls = {m.group(2).replace("sys_enter_", "").replace("raw_syscalls:sys_enter", "all"):
                     int(m.group(1).replace(",", "")) / served
                     for m in re.finditer(r"([\d,]+)\s+(\S*sys_enter\S*)", text)}
            perf[t]["syscalls_per_req"] = {k.split(":")[-1]: round(v, 2) for k, v in calls.items() if v >= 0.01}

print()
print(f"GET {path}; {rounds} interleaved rounds; gateway rate limit: {rate_limit}")
print(f"machine: {nproc} CPUs, {cpu}, kernel {kernel}; {nginx_version}; {wrk_version}")
print(f"load average before the platform started: {load_before}; after the runs: {load_after}; CI run: {ci}")
logs_emptied = os.environ.get("BENCH_KEEP_LOGS") != "1"
if logs_emptied:
    print("every run started with the processes' logs emptied (BENCH_KEEP_LOGS=1 keeps them)")
if os.environ.get("PIN_PROXY") == "1":
    print("PIN_PROXY=1: every proxy on CPU 1 (the gateway with one serving thread); books, PostgreSQL, Redis, wrk on CPU 0")
print()
show(f"LOADED: wrk -t{threads} -c{conns} -d{duration} --latency (after a {warmup} warm-up)", loaded)
if light_phase:
    show(f"ONE CONNECTION: wrk -t1 -c1 -d{light} --latency", light_phase)
for t, p in perf.items():
    if "cpu_us_per_req" in p:
        print(f"perf stat {t} (one more loaded run, under perf): {p['cpu_us_per_req']:.0f} µs CPU/request, "
              f"{p['context_switches_per_req']:.2f} context switches/request at {p['wrk']['rps']:.0f} req/s")
    if p.get("syscalls_per_req"):
        print(f"  system calls per request: {p['syscalls_per_req']}")

result = {
    "command": "bench/gateway-vs-nginx.sh",
    "request": f"GET {path}",
    "wrk": {"threads": int(threads), "connections": int(conns), "duration": duration, "warmup": warmup,
            "one_connection_duration": light},
    "rounds": rounds,
    "gateway_rate_limit": rate_limit,
    "machine": {"nproc": int(nproc), "cpu": cpu, "kernel": kernel, "ci_run": ci,
                "load_before": load_before, "load_after": load_after,
                "logs_emptied_before_each_run": logs_emptied},
    "versions": {"nginx": nginx_version, "wrk": wrk_version},
    "loaded": loaded,
    "one_connection": light_phase,
    "perf": perf,
}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
print()
print(f"raw wrk outputs and results.json in {out}")
bad = [t for ph in [loaded, light_phase] if ph for t in targets if ph["errors"][t]]
if bad:
    print(f"WARNING: non-2xx answers or socket errors against: {', '.join(sorted(set(bad)))}")
EOF
