#!/usr/bin/env bash
# The one test command. On Debian it installs what the tests need if missing (SIPp
# from sip-tester; Chromium for the page-tag test; python3-aiosmtpd, a real SMTP
# server for the e-mail test; stunnel4 and openssl, the TLS peer and certificates of
# the SIP-over-TLS test; espeak-ng, which speaks the default prompts when tsunagu is
# built), then builds and runs every test of the workspace:
# unit tests, the store conformance suite on SQLite, and the end-to-end tests that
# start real nodes and drive them with SIPp, Chromium and SMTP over loopback.
#
# The ScyllaDB backend is compiled here (`cargo check --features scylla`) and its pure
# parts unit-tested; its conformance run needs a real server (TSUNAGU_SCYLLA_NODES) and
# none can be installed here, so without one the run prints a SKIPPED line (see README,
# "Running across hosts"). The deployment files are validated by
# scripts/validate-deploy.sh (promtool from `prometheus`, PyYAML from `python3-yaml`,
# systemd-analyze from `systemd`). nftables cuts the network between cluster nodes
# in the partition test (it runs as root, as CI does). faketime runs a cluster node
# whose wall clock is off the others' (the clock-skew test).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || missing+=(python3-aiosmtpd)
command -v stunnel4 >/dev/null 2>&1 || missing+=(stunnel4)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
/usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
command -v sipp >/dev/null 2>&1 || { echo "sipp is still missing: the end-to-end tests cannot run" >&2; exit 1; }
command -v chromium >/dev/null 2>&1 || { echo "chromium is still missing: the page-tag test cannot run" >&2; exit 1; }
command -v chromedriver >/dev/null 2>&1 || { echo "chromedriver is still missing: the web screen tests cannot run" >&2; exit 1; }

cargo fmt --all -- --check
# Clippy with warnings as errors, the ScyllaDB backend included (the workspace's
# allowed lints and why are in Cargo.toml).
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p tsunagu-store --features scylla --all-targets --locked -- -D warnings

# Run every test (a failing test binary does not skip the others); then print one
# closing total over all test binaries.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The ScyllaDB backend compiles (it is behind a feature the workspace test leaves off).
if cargo check -p tsunagu-store --features scylla --locked; then
    echo "test result: ok. 1 passed; 0 failed; (scylla backend compiles)" >> "$log"
else
    echo "test result: FAILED. 0 passed; 1 failed; (scylla backend compiles)" >> "$log"
    status=1
fi
# The criterion benches (a workspace of their own, never run as tests) still compile
# against the crates: they produce the README's figures, and once rotted unnoticed.
if (cd benches && CARGO_TARGET_DIR=../target/benches cargo check --benches --locked); then
    echo "test result: ok. 1 passed; 0 failed; (benches compile)" >> "$log"
else
    echo "test result: FAILED. 0 passed; 1 failed; (benches compile)" >> "$log"
    status=1
fi
# The deployment files (compose, node configs, systemd unit, alert rules, dashboard).
if deploy_out=$(scripts/validate-deploy.sh target/debug/tsunagu 2>&1); then
    echo "$deploy_out"
    n=$(grep -c '^deploy: ok: ' <<<"$deploy_out")
    echo "test result: ok. $n passed; 0 failed; (deploy files)" >> "$log"
else
    echo "$deploy_out"
    echo "test result: FAILED. 0 passed; 1 failed; (deploy files)" >> "$log"
    status=1
fi
# Fuzz what the network meets first (SIP parsing, the stream framer, media parsing) for
# a bounded time, 60 s in all split between the targets (cargo-fuzz; scripts/fuzz.sh).
fuzz_log=$(mktemp)
if scripts/fuzz.sh "${TSUNAGU_FUZZ_SECONDS:-60}" > "$fuzz_log" 2>&1; then
    targets=$(grep -c '^fuzzing ' "$fuzz_log")
    echo "fuzz: $targets targets: $(grep -E '^(fuzzing|Done [0-9]+ runs)' "$fuzz_log" | tr '\n' ' '), no crash"
    echo "test result: ok. $targets passed; 0 failed; (fuzz)" >> "$log"
else
    tail -60 "$fuzz_log"
    echo "fuzz: FAILED (input saved in fuzz/artifacts/<target>/)"
    echo "test result: FAILED. 0 passed; 1 failed; (fuzz)" >> "$log"
    status=1
fi
rm -f "$fuzz_log"
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "total: $passed passed, $failed failed"
exit "$status"
