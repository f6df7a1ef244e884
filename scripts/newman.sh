#!/usr/bin/env bash
# Starts `bookstore up` in a scratch directory on free ports, runs the Postman collection against
# it with newman, and stops the platform (also when newman fails).
set -euo pipefail
cd "$(dirname "$0")/.."
bookstore=${1:?usage: scripts/newman.sh path/to/bookstore}
dir=$(mktemp -d -t bookstore-newman-XXXX)
up_pid=""
cleanup() {
  if [[ -n "$up_pid" ]] && kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

"$bookstore" up --dir "$dir" --gateway-port 0 --registry-port 0 --quiet >"$dir/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 600); do
  if [[ -f "$dir/state.json" ]] && grep -q '"ready": true' "$dir/state.json"; then break; fi
  kill -0 "$up_pid" 2>/dev/null || { cat "$dir/up.log" >&2; echo "bookstore up failed" >&2; exit 1; }
  sleep 0.2
done
grep -q '"ready": true' "$dir/state.json" || { cat "$dir/up.log" >&2; echo "bookstore up not ready in 120 s" >&2; exit 1; }
gateway=$(sed -n 's/.*"gateway_url": "\(.*\)".*/\1/p' "$dir/state.json")
# The admin's generated password (alphanumeric), for the collection's "Log in as the admin".
admin_password=$(sed -n 's/.*"admin_password": "\(.*\)".*/\1/p' "$dir/secrets.json")

newman run postman/bookstore.postman_collection.json \
  --environment postman/local.postman_environment.json \
  --env-var "baseUrl=$gateway" \
  --env-var "adminPassword=$admin_password" \
  --reporters cli --reporter-cli-no-banner --color off
