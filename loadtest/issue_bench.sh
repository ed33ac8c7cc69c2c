#!/usr/bin/env bash
# Issuance throughput: starts a release node, creates a dynamic pool of 1000 numbers
# with a 1 s hold (so numbers recycle and the pool does not stay exhausted), and runs
# wrk against POST /v1/pools/{id}/issue with a new session per request.
# Usage: loadtest/issue_bench.sh [seconds] [connections]   (needs: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
conns=${2:-32}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
bin=${TSUNAGU_BIN:-target/release/tsunagu}
[ -x "$bin" ] || cargo build --release --bin tsunagu
work=$(mktemp -d)
cat > "$work/node.toml" <<TOML
[node]
data_dir = "$work/data"
[api]
listen = "127.0.0.1:8080"
admin_token = "bench-admin-token"
[log]
level = "warn"
TOML
"$bin" serve --config "$work/node.toml" > /dev/null 2> "$work/node.log" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "data: $work" ' EXIT
for _ in $(seq 100); do curl -sf localhost:8080/healthz > /dev/null && break; sleep 0.1; done
api() { curl -sf -H "Authorization: Bearer $1" -H 'Content-Type: application/json' -d "$3" "localhost:8080$2"; }
key=$(api bench-admin-token /v1/operators '{"name":"bench"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["api_key"])')
adv=$(api "$key" /v1/advertisers '{"name":"shop"}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
numbers=$(python3 -c 'print(",".join("\"0507%07d\"" % i for i in range(1000)))')
pool=$(api "$key" /v1/pools "{\"advertiser_id\":\"$adv\",\"mode\":\"dynamic\",\"numbers\":[$numbers],\"hold_seconds\":1,\"overflow_number\":\"0120000000\",\"destinations\":[{\"number\":\"0311112222\"}]}" | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
TSUNAGU_KEY=$key TSUNAGU_POOL=$pool wrk -t2 -c"$conns" -d"${secs}s" --latency -s loadtest/issue.lua http://127.0.0.1:8080
curl -s localhost:8080/metrics | grep -E "^tsunagu_pool_(issued|overflows)_total"
