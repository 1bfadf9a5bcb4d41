#!/usr/bin/env bash
# Synthesizes the HDPA core with Yosys to generic cells (no process kit: gates and flip-flops,
# not um^2) and prints the cells per unit: the steps of Yosys' `synth` except memory_map, so
# the behavioural buffers stay memories ($mem_v2, what SRAM macros would be) and the counts are
# the logic's. Needs yosys (Debian package `yosys`).
#   rtl/synth.sh [hdp hw vectors flags]   (default: --preset edge --d 32 --n-max 64)
#   HDP_BIN=path  the hdp binary (default: build target/release/hdp)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${HDP_BIN:-}" ]; then
    cargo build -q --release -p hdp-cli
    HDP_BIN=$root/target/release/hdp
fi
command -v yosys >/dev/null || { echo "yosys not found: apt-get install yosys" >&2; exit 1; }
out=${RTL_BUILD:-$root/target/rtl}/synth
mkdir -p "$out"
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--preset edge --d 32 --n-max 64)
"$HDP_BIN" hw vectors "${flags[@]}" --cases 0 -o "$out/params.txt" 2>/dev/null
read -r _ D NMAX F KI P R KF E KS < <(sed -n 2p "$out/params.txt")
echo "== HDPA core D=$D NMAX=$NMAX F=$F KI=$KI P=$P R=$R KF=$KF E=$E KS=$KS"
yosys -q -l "$out/yosys.log" -p "
read_verilog -sv -I rtl rtl/hdpa_core.sv rtl/hdpa_units.sv
chparam -set D $D -set NMAX $NMAX -set F $F -set KI $KI -set P $P -set R $R -set KF $KF -set E $E -set KS $KS hdpa_core
synth -top hdpa_core -run begin:fine
opt -fast -full
opt -full
techmap
opt -fast
abc -fast
opt -fast
tee -o $out/stat.txt stat
tee -o $out/stat.json stat -json
"
grep -E "^=== |Number of cells|DFF|Number of memory bits" "$out/stat.txt" | sed 's/^ *//' | head -80
echo "(full report: $out/stat.txt)"
