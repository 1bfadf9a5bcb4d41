#!/usr/bin/env bash
# Fuzzes every parser of untrusted input for SECONDS each (default 120): the .npy reader, the
# --qkv safetensors loader, model config.json and model.safetensors, traces, simulator presets
# and energy tables, the peers table. Failing inputs land in fuzz/crashes/; move them to
# fuzz/corpus/<target>/ once fixed, so the test suite replays them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
shift || true
cargo build --release --bin hdp-fuzz
./target/release/hdp-fuzz --seconds "$seconds" "$@"
