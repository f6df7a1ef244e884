# Shared by the bench scripts: `source bench/lib.sh` after `cd` to the repository root.
#   say / die                 progress and fatal messages on stderr
#   bookstore_binary          sets BOOKSTORE: $BOOKSTORE_BIN, else builds the release binary
#   bare_proxy_binary         sets BARE_BIN: $BARE_PROXY_BIN, else builds the bare proxy example
#   start_platform DIR [..]   `bookstore up` in the background (rate limiter off, no demo data,
#                             free ports, extra up options after DIR); waits until ready; sets
#                             up_pid and gateway. The log is DIR.out.
#   stop_platform             SIGTERM, 30 s to stop in order, then SIGKILL
#   wait_until_up DIR OUT     waits for the `up` started as up_pid (output in OUT) to be ready
#   process_field DIR K F     field F of the first process of kind K in DIR/state.json
#   first_book_id URL         the first book's id in the catalog at URL
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

# One field of the first process of KIND in DIR/state.json (e.g. `books url`, `gateway pid`).
process_field() { # dir kind field
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))
print([p for p in s["processes"] if p["kind"]==sys.argv[2]][0][sys.argv[3]])' \
    "$1/state.json" "$2" "$3"
}

# The id of the first book in the catalog of the books (or gateway) URL; dies if there is none.
first_book_id() {
  local id
  id=$(curl -sf "$1/api/books?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])') ||
    die "no book found at $1/api/books?limit=1"
  echo "$id"
}

up_pid=""
# Waits until the `bookstore up` running as $up_pid (its output in OUT) has written DIR/state.json
# as ready; dies if it exits first or is not ready within 120 s.
wait_until_up() { # dir out
  for _ in $(seq 1 1200); do
    kill -0 "$up_pid" 2>/dev/null || { cat "$2" >&2; die "bookstore up exited"; }
    [[ $(json_field "$1/state.json" ready 2>/dev/null) == True ]] && return
    sleep 0.1
  done
  die "the platform was not ready after 120 s (logs in $1/logs)"
}

start_platform() {
  local dir=$1; shift
  BOOKSTORE_GATEWAY__RATE_LIMIT__ENABLED=false "$BOOKSTORE" up --dir "$dir" \
    --gateway-port 0 --registry-port 0 --quiet --no-demo "$@" >"$dir.out" 2>&1 &
  up_pid=$!
  wait_until_up "$dir" "$dir.out"
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
