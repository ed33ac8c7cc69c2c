#!/usr/bin/env bash
# Fuzzes everything a SIP datagram meets before a call actor (fuzz/fuzz_targets/
# sip_parse.rs) with cargo-fuzz (libFuzzer) for a bounded time: `scripts/fuzz.sh [secs]`
# (default 60). scripts/test.sh runs it, so CI fuzzes on every run; a crash fails it and
# leaves the input in fuzz/artifacts/sip_parse/ (replay: cargo fuzz run sip_parse FILE).
#
# cargo-fuzz is installed from crates.io if missing. It passes -Z flags to rustc;
# RUSTC_BOOTSTRAP=1 lets the machine's stable toolchain accept them (no nightly needed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
# New inputs go to a scratch corpus; the committed seeds stay as they are.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd fuzz
cargo fuzz run sip_parse "$scratch" corpus/sip_parse -- \
    -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1
