#!/usr/bin/env bash
# Verifies the HDPA core RTL (rtl/hdpa_core.sv) against the bit-accurate Rust model
# (crates/hdp-hw): lints every configuration with Verilator -Wall, checks the generated table,
# then for each configuration writes vectors with `hdp hw vectors` (synthetic and, where
# given, a real layer's Q/K/V), builds the Verilator testbench with that configuration's
# parameters and requires every case bit-exact: kept keys, head importance, outputs and the
# cycle count of every stage. Needs verilator (Debian package `verilator`).
#   HDP_BIN=path   the hdp binary to use (default: build target/release/hdp)
#   RTL_BUILD=dir  build directory (default: target/rtl)
#   RTL_QKV=file   a real layer's Q/K/V (.npy from `hdp eval --dump-qkv`) to add as vectors
#                  (default: layer 2 of the packaged model on four Lee documents, dumped here
#                  when the assets are present; RTL_QKV=none skips real vectors)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${HDP_BIN:-}" ]; then
    cargo build -q --release -p hdp-cli
    HDP_BIN=$root/target/release/hdp
fi
build=${RTL_BUILD:-$root/target/rtl}
mkdir -p "$build"
command -v verilator >/dev/null || { echo "verilator not found: apt-get install verilator" >&2; exit 1; }

"$HDP_BIN" hw lut -o "$build/exp2_lut.svh"
cmp -s "$build/exp2_lut.svh" rtl/exp2_lut.svh || {
    echo "rtl/exp2_lut.svh differs from the model's table: run 'hdp hw lut -o rtl/exp2_lut.svh'" >&2; exit 1; }

# name | hdp hw vectors flags (the file's params line sets the RTL parameters)
configs=(
  "edge-d32|--preset edge --d 32 --n-max 64 --cases 60 --seed 1"
  "server-d64|--preset server --d 64 --n-max 128 --cases 16 --seed 2"
  "single-lane|--d 16 --n-max 24 --lanes 1,1,1,1,1,1 --search-bits 1 --cases 60 --seed 3"
  "ragged-lanes-f4|--d 24 --n-max 40 --lanes 3,5,3,7,4,5 --search-bits 6 --frac-bits 4 --cases 60 --seed 4"
)
qkv=${RTL_QKV:-}
if [ -z "$qkv" ] && [ -d assets/all-MiniLM-L6-v2 ]; then
    qkv=$build/qkv-lee-layer2.npy
    "$HDP_BIN" eval --task lee-similarity --limit 4 --max-length 128 --dump-qkv "$qkv" \
        --dump-layer 2 --json >/dev/null 2>"$build/qkv.log" || { cat "$build/qkv.log" >&2; exit 1; }
fi
if [ -n "$qkv" ] && [ "$qkv" != none ]; then
    # A real layer (12 heads) twice: bidirectional with tau head pruning, and causal with
    # top-k head pruning over kept sums at a lower keep fraction.
    configs+=("real-qkv|--preset edge --qkv $qkv --n-max 128 --tau 0.3"
              "real-qkv-causal|--preset edge --qkv $qkv --n-max 128 --search-bits 2 --causal --keep 0.2 --head-top-k 8 --head-importance kept-sum")
else
    echo "(no real Q/K/V: assets/all-MiniLM-L6-v2 missing and RTL_QKV not set; synthetic vectors only)"
fi
declare -A built=()
status=0
for c in "${configs[@]}"; do
    name=${c%%|*}; flags=${c#*|}
    dir=$build/$name
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    "$HDP_BIN" hw vectors $flags -o "$dir/vectors.txt" 2>"$dir/vectors.log" || { cat "$dir/vectors.log" >&2; exit 1; }
    read -r _ D NMAX F KI P R KF E KS NL < <(sed -n 2p "$dir/vectors.txt")
    gflags="-GD=$D -GNMAX=$NMAX -GF=$F -GKI=$KI -GP=$P -GR=$R -GKF=$KF -GE=$E -GKS=$KS -GNL=$NL"
    obj=${built[$gflags]:-}
    if [ -z "$obj" ]; then
        obj=$dir/obj
        # shellcheck disable=SC2086
        verilator --lint-only -Wall --unroll-count 1024 --top-module hdpa_core -Irtl $gflags rtl/hdpa_core.sv rtl/hdpa_units.sv
        # shellcheck disable=SC2086
        verilator --cc --exe --build -j 2 -O2 --unroll-count 1024 --unroll-stmts 1000000 -Wall -Wno-fatal --top-module hdpa_core -I"$root/rtl" $gflags --Mdir "$obj" \
            -o tb "$root/rtl/hdpa_core.sv" "$root/rtl/hdpa_units.sv" "$root/rtl/tb/tb_hdpa.cpp" >"$dir/build.log" 2>&1 || { tail -30 "$dir/build.log" >&2; exit 1; }
        built[$gflags]=$obj
    fi
    echo "== $name ($gflags): $(cat "$dir/vectors.log")"
    "$obj/tb" "$dir/vectors.txt" || status=1
    if [ "$name" = "${configs[0]%%|*}" ]; then
        # The testbench must be able to fail: one expected output code off by one.
        awk '!done && /^out / { $2 = $2 + 1; done = 1 } { print }' "$dir/vectors.txt" >"$dir/mutated.txt"
        if "$obj/tb" "$dir/mutated.txt" >/dev/null 2>&1; then
            echo "the testbench accepted a corrupted expected output" >&2; status=1
        else
            echo "   (a corrupted expected output is rejected, as it must be)"
        fi
    fi
done
exit $status
