#!/usr/bin/env bash
# Regenerates the figures in docs/results from the committed data next to them (no
# measurement runs), and renders each to PNG for a look when rsvg-convert (Debian's
# librsvg2-bin) is installed. Needs the release binary: cargo build --release.
set -euo pipefail
cd "$(dirname "$0")/.."
hdp=${HDP_BIN:-target/release/hdp}
r=docs/results
"$hdp" bench plot "$r/bench-attention-zen4-tiers.jsonl" --sdpa "$r/bench-sdpa-zen4.jsonl" \
    -o "$r/bench-speedup-zen4.svg"
"$hdp" bench plot "$r/bench-attention-1-thread.jsonl" -o "$r/bench-speedup-1-thread.svg" \
    --title "HDP vs our dense attention, Zen 3 (AVX2), 1 thread, earlier kernels"
"$hdp" bench plot "$r/bench-attention-2-threads.jsonl" -o "$r/bench-speedup-2-threads.svg" \
    --title "HDP vs our dense attention, Zen 3 (AVX2), 2 threads, earlier kernels"
"$hdp" sweep --from "$r/sweep-rt-sentiment.json" --plot "$r/sweep-rt-sentiment.svg"
# The simulator is deterministic: its figures come from the presets and a synthetic workload.
for preset in edge server; do
    "$hdp" sim --preset $preset --model-shape bert-base --seq-len 512 --block-sparsity 0.7 \
        --head-sparsity 0 --plot "$r/sim-$preset-bert-base-512.svg" \
        --energy-plot "$r/sim-$preset-bert-base-512-energy.svg" > /dev/null
done
"$hdp" sim --preset edge --model-shape bert-base --seq-len 512 sweep --int-mults 64,128,256 \
    --sv-mults 64,128,256 --sram-kib 32,256 --plot "$r/sim-edge-design-space.svg" > /dev/null
if command -v rsvg-convert > /dev/null; then
    for f in "$r"/bench-speedup-*.svg "$r"/sweep-*.svg "$r"/sim-*.svg; do
        rsvg-convert "$f" -o "${TMPDIR:-/tmp}/$(basename "${f%.svg}").png"
    done
    echo "PNG renderings in ${TMPDIR:-/tmp}"
fi
