#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this).
# Formatting and lints first (cheap, and they fail fast), then every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --lib --bins --tests
