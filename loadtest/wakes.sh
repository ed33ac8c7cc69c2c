#!/usr/bin/env bash
# Wake-ups and CPU per call by thread in a node's steady state.
#
#   bash loadtest/wakes.sh [BIN] [RATE]      # defaults: target/release/tsunagu, 600 cps
#
# Runs loadtest/ladder.py for one 50 s step at RATE through BIN and, from second 15 to
# second 45 of it (every timer of a call, the 32 s ends included, is then running at
# its steady rate), reads each thread's voluntary context switches (`voluntary_ctxt_switches`
# in /proc/PID/task/*/status: the times it went to sleep and was woken) and run time
# (schedstat), summed by thread name and divided by the calls of those 30 s. The
# ladder's own CPU figure covers its step only, so work a call leaves for later (its
# transactions' ends, 32 s on) falls outside it; this one does not.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/tsunagu}"
RATE="${2:-600}"
python3 loadtest/ladder.py --bin "$BIN" --rates "$RATE" --seconds 50 >/tmp/tsunagu-wakes-ladder.txt 2>&1 &
ladder=$!
P=""
for _ in $(seq 1 60); do
  P=$(pgrep -f "tsunagu serve --config" | head -1 || true)
  if [ -n "$P" ] && [ "$(pgrep -x sipp | wc -l)" -ge 2 ]; then break; fi
  sleep 1
done
[ -n "$P" ] || { echo "no node started (see /tmp/tsunagu-wakes-ladder.txt)" >&2; exit 1; }
snap() {
  for t in /proc/"$P"/task/*; do
    echo "$(cat "$t"/comm) $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t"/status) $(awk '{print $1}' "$t"/schedstat)"
  done | awk '{c[$1]+=$2; r[$1]+=$3} END {for (k in c) print k, c[k], r[k]}' | sort
}
sleep 15
snap >/tmp/tsunagu-wakes-a.txt
sleep 30
snap >/tmp/tsunagu-wakes-b.txt
echo "node $P at $RATE cps, seconds 15-45 of the step:"
join /tmp/tsunagu-wakes-a.txt /tmp/tsunagu-wakes-b.txt | awk -v rate="$RATE" '
  { w = ($4 - $2) / (rate * 30); c = ($5 - $3) / 1e6 / (rate * 30); tw += w; tc += c
    if (c > 0 || w > 0) printf "  %-16s wake-ups per call %5.2f   CPU ms per call %.3f\n", $1, w, c }
  END { printf "  %-16s wake-ups per call %5.2f   CPU ms per call %.3f\n", "all", tw, tc }'
wait "$ladder" || true
