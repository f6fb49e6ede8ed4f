#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this).
# Formatting and lints first (cheap, and they fail fast), then every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/html_report.rs renders report.html in headless Chromium: install Debian's package when
# it is missing and we can (root with apt-get); otherwise that test says how to install it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing chromium (apt-get) for the HTML report test" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --lib --bins --tests
