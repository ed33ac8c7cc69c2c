#!/usr/bin/env bash
# Side by side: the same SIPp ladder through tsunagu and through Kamailio, on this machine,
# rate by rate (the two modes of each rate one after the other, which goes first
# alternating from rate to rate: run one ladder after the other, the machine's drift
# between them was in the comparison).
#
#   bash loadtest/sbs/run.sh                # from the project root; ~15 min
#   RATES=1000,2000,3000 DUR=20 bash loadtest/sbs/run.sh
#
# Needs a release build (cargo build --release --bin tsunagu) or TSUNAGU_BIN=path.
# Installs sip-tester and kamailio from Debian if missing. Every process it starts is
# stopped by PID; all traffic stays on 127.0.0.1. Leave the machine otherwise idle.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RATES="${RATES:-1000,2000,3000,4000}"
DUR="${DUR:-20}"
HOLD_MS="${HOLD_MS:-1000}"
MODES="${MODES:-tsunagu proxy}"          # proxy = Kamailio
export TSUNAGU_BIN="${TSUNAGU_BIN:-$PWD/target/release/tsunagu}"
export OUT="${OUT:-/tmp/sbs/$(date +%Y%m%d-%H%M%S)}"
export QUIET_WAIT_S="${QUIET_WAIT_S:-120}"
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x "$TSUNAGU_BIN" ] || { echo "no tsunagu binary at $TSUNAGU_BIN: cargo build --release --bin tsunagu" >&2; exit 1; }
mkdir -p "$OUT"
IFS=, read -ra rates <<< "$RATES"
read -ra modes <<< "$MODES"
i=0
for r in "${rates[@]}"; do
  order=("${modes[@]}")
  if (( i % 2 == 1 )); then
    mapfile -t order < <(printf '%s\n' "${modes[@]}" | tac)
  fi
  for m in "${order[@]}"; do
    python3 "$HERE/bench.py" ladder --mode "$m" --rates "$r" --dur "$DUR" --hold-ms "$HOLD_MS" --out "$OUT"
  done
  i=$((i + 1))
done
python3 "$HERE/bench.py" summary --out "$OUT"
echo "raw results: $OUT"
