#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (SSE framer, chunk parser, dataset file formats) for
# SECONDS each (default 60). The property tests in tests/parsers_never_panic.rs run the same
# parsers briefly in CI; this runs them longer, guided by coverage.
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly
#   cargo install cargo-fuzz
# Findings land in fuzz/artifacts/TARGET/; replay one with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs cargo-fuzz: cargo install cargo-fuzz" >&2
    exit 2
fi
for target in $(cargo +nightly fuzz list); do
    echo "== $target: ${seconds}s"
    # 4 GiB: the dataset target builds conversations; more than that is a finding.
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -max_len=4096 \
        -rss_limit_mb=4096
done
