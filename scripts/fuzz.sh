#!/usr/bin/env bash
# Fuzzes, with cargo-fuzz (libFuzzer) for a bounded time, what the network meets before
# a call actor: `scripts/fuzz.sh [secs] [target...]` (default 60 s in all, split evenly
# between the targets; default targets: all of them).
#   sip_parse      a datagram or framed message: parser, 400 answers, header/URI/SDP helpers
#   stream_framer  a TCP/TLS byte stream split at random points into the stream framer
#   media_parse    SDP rewriting, RFC 4733 events and INFO bodies, WAV prompts (uploads)
# scripts/test.sh runs it, so CI fuzzes on every run; a crash fails it and leaves the
# input in fuzz/artifacts/<target>/ (replay: cargo fuzz run <target> FILE).
#
# cargo-fuzz is installed from crates.io if missing. It passes -Z flags to rustc;
# RUSTC_BOOTSTRAP=1 lets the machine's stable toolchain accept them (no nightly needed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sip_parse stream_framer media_parse)
each=$(( secs / ${#targets[@]} ))
[ "$each" -ge 1 ] || each=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
cd fuzz
for target in "${targets[@]}"; do
    # New inputs go to a scratch corpus; the committed seeds stay as they are.
    scratch=$(mktemp -d)
    echo "fuzzing $target for ${each} s"
    status=0
    cargo fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$each" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 || status=$?
    rm -rf "$scratch"
    [ "$status" -eq 0 ] || { echo "fuzz target $target FAILED" >&2; exit "$status"; }
done
