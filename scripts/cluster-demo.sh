#!/usr/bin/env bash
# A three-node tsunagu cluster on this machine, in one command.
#
#   scripts/cluster-demo.sh [DIR]                   build (release) if needed, start, wait, Ctrl-C stops
#   scripts/cluster-demo.sh --write-configs [DIR]   only write certificates, secrets and configs
#
# In DIR (default: a new /tmp/tsunagu-cluster-XXXXXX) it makes a throwaway CA and one
# certificate per node (IP SANs 127.0.0.1/2/3), a cluster secret and an admin token, and
# three configurations sharing one embedded store file:
#
#   node  SIP (udp+tcp)     API                    cluster          media
#   n1    127.0.0.1:5060    http://127.0.0.1:8081  127.0.0.1:7000   127.0.0.1:20000-29999
#   n2    127.0.0.2:5060    http://127.0.0.1:8082  127.0.0.2:7000   127.0.0.2:20000-29999
#   n3    127.0.0.3:5060    http://127.0.0.1:8083  127.0.0.3:7000   127.0.0.3:20000-29999
#
# each with one trunk taking INVITEs from 127.0.0.0/8 and forwarding to
# udp:127.0.0.1:5070. It starts the three nodes in the background, waits until
# `tsunagu cluster status` shows every member up on every node, provisions a demo
# number through n1, prints what to do next, and stops all three on Ctrl-C.
# Starting again on the same DIR reuses its certificates, secrets, store and data.
#
# Environment: TSUNAGU_BIN (a binary to use instead of building target/release/tsunagu),
# TSUNAGU_DEMO_LOG_LEVEL (the nodes' log.level, default info; loadtest/cluster_ladder.py
# sets warn). Needs openssl; curl for the demo number.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODES=(1 2 3)
NUMBER=0501234567
DESTINATION=0311112222

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }

WRITE_ONLY=0
DIR=""
for arg in "$@"; do
  case "$arg" in
    --write-configs) WRITE_ONLY=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) [ -z "$DIR" ] || { usage >&2; exit 2; }; DIR="$arg" ;;
  esac
done

command -v openssl >/dev/null || { echo "openssl is required (apt-get install openssl)" >&2; exit 2; }
# Secrets, keys, the store and call records: nobody else may read them.
umask 077
if [ -z "$DIR" ]; then
  DIR="$(mktemp -d /tmp/tsunagu-cluster-XXXXXX)"
fi
mkdir -p "$DIR/certs"
DIR="$(cd "$DIR" && pwd)"

# --- certificates: a CA and one leaf per node (server and client: mutual TLS) ---------
make_certs() {
  local c="$DIR/certs"
  [ -s "$c/ca.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$c/ca.key" -out "$c/ca.pem" -days 30 -subj "/CN=tsunagu demo cluster CA" 2>/dev/null
  local i
  for i in "${NODES[@]}"; do
    [ -s "$c/n$i.pem" ] && continue
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$c/n$i.key" \
      -out "$c/n$i.csr" -subj "/CN=n$i" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$i" > "$c/n$i.ext"
    openssl x509 -req -in "$c/n$i.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial \
      -out "$c/n$i.pem" -days 30 -extfile "$c/n$i.ext" 2>/dev/null
    rm -f "$c/n$i.csr" "$c/n$i.ext"
  done
}

# --- secrets: the cluster's shared secret and one admin token for all three APIs ------
make_secret() { [ -s "$1" ] || openssl rand -hex 24 > "$1"; }

write_config() {
  local i=$1
  cat > "$DIR/n$i.toml" <<EOF
# tsunagu cluster demo, node n$i (written by scripts/cluster-demo.sh)
[node]
id = "n$i"
data_dir = "$DIR/n$i"
drain_seconds = 5
# Three nodes share this host: one runtime thread each costs about 15 % less CPU per
# call (README, "Runtime threads").
worker_threads = 1

[sip]
listen = ["udp:127.0.0.$i:5060", "tcp:127.0.0.$i:5060"]
# SIP over UDP read by the runtime, with a standby thread only while the runtime is
# late (the default, written out for loadtest/cluster_ladder.py to copy): one wake-up
# per datagram rather than two well below capacity (README, "Reading SIP over UDP").
udp_receive = "auto"

[media]
address = "127.0.0.$i"
ports = "20000-29999"

[api]
listen = "127.0.0.1:808$i"
admin_token_file = "$DIR/admin_token"

[store]
backend = "embedded"
path = "$DIR/cluster.db"

[cluster]
listen = "127.0.0.$i:7000"
seeds = ["127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.3:7000"]
secret_file = "$DIR/cluster_secret"

[cluster.tls]
cert_file = "$DIR/certs/n$i.pem"
key_file = "$DIR/certs/n$i.key"
ca_file = "$DIR/certs/ca.pem"

[log]
level = "${TSUNAGU_DEMO_LOG_LEVEL:-info}"

[[trunks]]
name = "local"
inbound = ["127.0.0.0/8"]
outbound = "udp:127.0.0.1:5070"

[[routes]]
prefix = ""
trunks = ["local"]
EOF
}

make_certs
make_secret "$DIR/cluster_secret"
make_secret "$DIR/admin_token"
for i in "${NODES[@]}"; do write_config "$i"; done

if [ "$WRITE_ONLY" = 1 ]; then
  echo "$DIR"
  exit 0
fi

# --- the binary ----------------------------------------------------------------------
if [ -n "${TSUNAGU_BIN:-}" ]; then
  BIN="$TSUNAGU_BIN"
else
  # cargo decides whether anything changed (a no-op when the build is fresh).
  (cd "$ROOT" && cargo build --release --bin tsunagu)
  BIN="$ROOT/target/release/tsunagu"
fi
[ -x "$BIN" ] || BIN="$(command -v "$BIN" || true)"
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  echo "${TSUNAGU_BIN:-tsunagu}: not an executable" >&2
  exit 2
fi
BIN="$(realpath "$BIN")" # the printed commands work from any directory
for i in "${NODES[@]}"; do
  "$BIN" check-config "$DIR/n$i.toml" >/dev/null
done

# --- start, and stop on Ctrl-C -----------------------------------------------------------
PIDS=()
stop() {
  trap - INT TERM EXIT
  if [ "${#PIDS[@]}" -gt 0 ]; then
    echo
    echo "stopping the nodes (they drain for up to 5 s)..."
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
  echo "stopped; everything is in $DIR (start again on it: $0 $DIR)"
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

for i in "${NODES[@]}"; do
  "$BIN" serve --config "$DIR/n$i.toml" >>"$DIR/n$i.log" 2>&1 &
  PIDS+=("$!")
done

# Every node sees both others up (the status CLI exits 0 with two members).
formed() {
  local i out
  for i in "${NODES[@]}"; do
    out="$("$BIN" cluster status --config "$DIR/n$i.toml" 2>/dev/null)" || return 1
    case "$out" in *"2 members: 2 up, 0 down"*) ;; *) return 1 ;; esac
  done
}
echo "starting n1 n2 n3 (logs in $DIR/n*.log)..."
deadline=$((SECONDS + 60))
until formed; do
  for k in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$k]}" 2>/dev/null; then
      echo "node n$((k + 1)) exited; the end of its log:" >&2
      tail -n 20 "$DIR/n$((k + 1)).log" >&2
      exit 1
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "the cluster did not form within 60 s:" >&2
    "$BIN" cluster status --config "$DIR/n1.toml" >&2 || true
    exit 1
  fi
  sleep 0.5
done

# --- a demo number, provisioned once through n1 ---------------------------------------
ADMIN="$(cat "$DIR/admin_token")"
KEY=""
if [ -s "$DIR/demo_api_key" ]; then
  KEY="$(cat "$DIR/demo_api_key")"
elif command -v curl >/dev/null; then
  api() { # METHOD PATH TOKEN BODY
    curl -sS -X "$1" -H "Authorization: Bearer $3" -H 'Content-Type: application/json' \
      --data "$4" "http://127.0.0.1:8081$2"
  }
  field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p"; }
  KEY="$(api POST /v1/operators "$ADMIN" '{"name": "demo"}' | field api_key)"
  ADV="$(api POST /v1/advertisers "$KEY" '{"name": "demo shop"}' | field id)"
  api POST /v1/numbers "$KEY" "{\"number\": \"$NUMBER\", \"advertiser_id\": \"$ADV\",
      \"destinations\": [{\"number\": \"$DESTINATION\", \"ring_seconds\": 20}],
      \"validity\": {\"min_talk_seconds\": 1, \"duplicate_window_seconds\": 0}}" >/dev/null
  [ -n "$KEY" ] && echo "$KEY" > "$DIR/demo_api_key"
fi

cat <<EOF

tsunagu cluster demo: n1 n2 n3 are up (pids ${PIDS[*]}), everything in $DIR

  node  SIP                     HTTP API                   cluster
  n1    udp/tcp 127.0.0.1:5060  http://127.0.0.1:8081/v1   127.0.0.1:7000
  n2    udp/tcp 127.0.0.2:5060  http://127.0.0.1:8082/v1   127.0.0.2:7000
  n3    udp/tcp 127.0.0.3:5060  http://127.0.0.1:8083/v1   127.0.0.3:7000

  admin token:   $ADMIN   (in $DIR/admin_token)
EOF
if [ -n "$KEY" ]; then
  cat <<EOF
  operator key:  $KEY   (number $NUMBER -> $DESTINATION, provisioned through n1)
EOF
else
  echo "  (no demo number: curl is missing; provision one as in the README's Quick start on port 8081)"
fi
cat <<EOF

Next, in another terminal (from $ROOT):
  # the cluster as n1 sees it (exit 0: all up, 1: a member down)
  $BIN cluster status --config $DIR/n1.toml
  # the destination, then ten calls through n2 (any node takes any call)
  sipp -sf loadtest/scenarios/uas_answer.xml -i 127.0.0.1 -p 5070 -bg
  sipp -sf loadtest/scenarios/uac.xml -s $NUMBER -key caller 09012345678 \\
       -i 127.0.0.1 -p 5061 127.0.0.2:5060 -m 10 -r 5 -d 2000
  # the calls, listed by n3
  curl -s -H "Authorization: Bearer ${KEY:-\$KEY}" 'http://127.0.0.1:8083/v1/calls?format=csv'
  # kill a node: the others declare it down within 2 s; start it again: it rejoins
  kill -9 ${PIDS[2]}; $BIN cluster status --config $DIR/n1.toml
  $BIN serve --config $DIR/n3.toml >>$DIR/n3.log 2>&1 &

Ctrl-C stops all three.
EOF

# Block until Ctrl-C. A node that exits (killed to watch the others notice) is reported;
# the others keep running.
ALIVE=("${PIDS[@]}")
while [ "${#ALIVE[@]}" -gt 0 ]; do
  wait -n "${ALIVE[@]}" || true
  STILL=()
  for k in "${!PIDS[@]}"; do
    pid="${PIDS[$k]}"
    case " ${ALIVE[*]} " in *" $pid "*) ;; *) continue ;; esac
    if kill -0 "$pid" 2>/dev/null; then
      STILL+=("$pid")
    else
      echo "node n$((k + 1)) (pid $pid) exited; the others go on (its log: $DIR/n$((k + 1)).log)" >&2
    fi
  done
  ALIVE=("${STILL[@]+"${STILL[@]}"}")
done
echo "every node exited" >&2
