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
read -r _ D NMAX F KI P R KF E KS NL < <(sed -n 2p "$out/params.txt")
echo "== HDPA core D=$D NMAX=$NMAX F=$F KI=$KI P=$P R=$R KF=$KF E=$E KS=$KS NL=$NL"
# Yosys' synth to generic cells, without memory_map (after the coarse steps of `synth`).
flow="opt -fast -full
opt -full
techmap
opt -fast
abc -fast
opt -fast
"
yosys -q -l "$out/yosys.log" -p "
read_verilog -sv -I rtl rtl/hdpa_core.sv rtl/hdpa_units.sv
chparam -set D $D -set NMAX $NMAX -set F $F -set KI $KI -set P $P -set R $R -set KF $KF -set E $E -set KS $KS -set NL $NL hdpa_core
synth -top hdpa_core -run begin:fine
$flow
tee -o $out/stat.txt stat
tee -o $out/stat.json stat -json
"
# The same flow on two reference circuits of known 45 nm area gives um^2 per generic cell.
for ref in ref_mul8 ref_add32; do
    yosys -q -p "
read_verilog -sv rtl/ref_cells.sv
synth -top $ref -run begin:fine
$flow
tee -q -o $out/$ref.json stat -json
"
done
# Cells per unit: each module's own cells (submodule instances excluded) times its instances,
# and the area they suggest at 45 nm (cells x the 8-bit multiplier's um^2 per cell).
python3 - "$out/stat.json" "$out/ref_mul8.json" "$out/ref_add32.json" <<'PY' | tee "$out/units.txt"
import json, re, sys
mods = json.load(open(sys.argv[1]))["modules"]
short = lambda n: re.search(r"hdpa_\w+", n).group(0)
top = next(n for n in mods if short(n) == "hdpa_core")
inst = {short(t): c for t, c in mods[top]["num_cells_by_type"].items() if "hdpa_" in t}
own = lambda m: m["num_cells"] - sum(c for t, c in m["num_cells_by_type"].items() if "hdpa_" in t or t.startswith("$mem"))
flops = lambda m: sum(c for t, c in m["num_cells_by_type"].items() if "DFF" in t)
rows = [(short(n), inst.get(short(n), 1), own(m), flops(m)) for n, m in mods.items()]
total = sum(k * c for _, k, c, _ in rows)
cells = lambda path: json.load(open(path))["design"]["num_cells"]
mul8, add32 = cells(sys.argv[2]), cells(sys.argv[3])
um2 = 282.0 / mul8
print(f"reference circuits: 8-bit multiplier {mul8} cells (282 um^2 at 45 nm: {um2:.3f} um^2/cell), "
      f"32-bit adder {add32} cells (137 um^2: {137.0 / add32:.3f} um^2/cell)")
print(f"{'unit':<18}{'instances':>10}{'cells each':>12}{'cells':>10}{'share':>8}{'flip-flops':>12}{'um^2 (45 nm est.)':>20}")
for name, k, c, f in sorted(rows, key=lambda r: -r[1] * r[2]):
    label = "controller+muxes" if name == "hdpa_core" else name
    print(f"{label:<18}{k:>10}{c:>12}{k * c:>10}{100 * k * c / total:>7.1f}%{k * f:>12}{k * c * um2:>20,.0f}")
mems = mods[top]["num_cells_by_type"].get("$mem_v2", 0)
print(f"{'total':<18}{'':>10}{'':>12}{total:>10}{'':>8}{sum(k * f for _, k, _, f in rows):>12}{total * um2:>20,.0f}"
      f"  (+ {mems} behavioural memories: SRAM, not counted)")
PY
echo "(full report: $out/stat.txt)"
