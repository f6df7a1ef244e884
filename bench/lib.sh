# Shared by the bench scripts: `source bench/lib.sh` after `cd` to the repository root.
#   say / die                 progress and fatal messages on stderr
#   bookstore_binary          sets BOOKSTORE: $BOOKSTORE_BIN, else builds the release binary
#   bare_proxy_binary         sets BARE_BIN: $BARE_PROXY_BIN, else builds the bare proxy example
#   start_platform DIR [..]   `bookstore up` in the background (rate limiter off, no demo data,
#                             free ports, extra up options after DIR); waits until ready; sets
#                             up_pid and gateway. The log is DIR.out.
#   stop_platform             SIGTERM, 30 s to stop in order, then SIGKILL
#   nginx_conf DIR PORT UPSTREAM WORKERS [ACCESS]
#                             writes DIR/nginx.conf: nginx as the gateway benchmarks run it

say() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

bookstore_binary() {
  if [[ -n "${BOOKSTORE_BIN:-}" ]]; then
    BOOKSTORE=$BOOKSTORE_BIN
    return
  fi
  say "building the release binary"
  cargo build --release --quiet --bin bookstore
  BOOKSTORE="$(target_dir)/release/bookstore"
}

# Cargo's target directory (CARGO_TARGET_DIR or the workspace's).
target_dir() {
  cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

# Sets BARE_BIN: $BARE_PROXY_BIN, else builds gateway/examples/bare_proxy.rs (release).
bare_proxy_binary() {
  if [[ -n "${BARE_PROXY_BIN:-}" ]]; then
    BARE_BIN=$BARE_PROXY_BIN
    return
  fi
  say "building gateway/examples/bare_proxy.rs (release)"
  cargo build --release --quiet -p gateway --example bare_proxy
  BARE_BIN="$(target_dir)/release/examples/bare_proxy"
}

# Reads one top-level field of a JSON file.
json_field() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

up_pid=""
start_platform() {
  local dir=$1; shift
  BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED=false "$BOOKSTORE" up --dir "$dir" \
    --gateway-port 0 --registry-port 0 --quiet --no-demo "$@" >"$dir.out" 2>&1 &
  up_pid=$!
  for _ in $(seq 1 1200); do
    kill -0 "$up_pid" 2>/dev/null || { cat "$dir.out" >&2; die "bookstore up exited"; }
    [[ $(json_field "$dir/state.json" ready 2>/dev/null) == True ]] && break
    sleep 0.1
  done
  gateway=$(json_field "$dir/state.json" gateway_url)
}

stop_platform() {
  if [[ -n "$up_pid" ]]; then
    kill -TERM "$up_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$up_pid" 2>/dev/null || true
    up_pid=""
  fi
}

# nginx as a reverse proxy the way the gateway benchmarks compare against it: WORKERS worker
# processes on 127.0.0.1:PORT in front of UPSTREAM (host:port) with a keep-alive pool, no access
# log unless ACCESS gives the directives, and nginx's default of 1000 requests per connection
# lifted on both sides (the gateway never reconnects either). Temporary files under DIR.
nginx_conf() {
  local dir=$1 port=$2 upstream=$3 workers=$4 access=${5:-"access_log off;"}
  mkdir -p "$dir/logs" "$dir/tmp"
  chmod 755 "$dir" "$dir/tmp" "$dir/logs" # nginx workers run as nobody when started as root
  cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    $access
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
    upstream books {
        server $upstream;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://books;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}
