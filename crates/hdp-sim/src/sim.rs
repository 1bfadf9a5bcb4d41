//! The cycle model. Work is cut into items, one per block-row of a head, and flows through the
//! units as a pipeline with double buffering: each item occupies every unit for
//! `ceil(work / rate)` cycles, consecutive items overlap, so a phase of items costs the sum of
//! each item's slowest stage plus the fill of the first item, plus the DRAM latency of the
//! phase's first stream. Early head pruning, when the workload uses it, splits a layer into two
//! phases: the integer pass and pruning of every head (phase A) must finish before any head's
//! fractional work (phase B), because a head's fate depends on the layer's maximum importance.
//! A pruned head therefore costs only its phase-A items. Memory is a stage like the others: when it is an item's
//! slowest stage, those cycles count as memory-bound.

use crate::config::{EnergyTable, HwConfig};
use crate::workload::{LayerWork, Selection, Workload};
use serde::Serialize;

/// Work of one item, in operations and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Item {
    /// Integer-part MACs.
    pub int_macs: f64,
    /// Pruning-unit block operations (comparisons, over every pass).
    pub prune_ops: f64,
    /// Pruning-unit cycles: passes x `ceil(blocks / lanes)`, shared by the rows searched at
    /// once.
    pub prune_cycles: f64,
    /// Score MACs: fraction MACs (HDPA) or full-precision MACs (dense).
    pub score_macs: f64,
    /// Exponentials.
    pub exps: f64,
    /// P.V MACs.
    pub sv_macs: f64,
    /// Reciprocals `1 / Z` (one per query row of a surviving head).
    pub recips: f64,
    /// Output elements normalized (`d` per query row of a surviving head).
    pub norms: f64,
    /// On-chip buffer traffic.
    pub sram_bytes: f64,
    /// Off-chip traffic.
    pub dram_bytes: f64,
}

/// A hardware unit: how long an item occupies it and what that costs.
pub trait Unit {
    /// Name in reports.
    fn name(&self) -> &'static str;
    /// Cycles the item occupies the unit.
    fn cycles(&self, item: &Item) -> f64;
    /// Energy of the item's work on this unit, pJ.
    fn energy_pj(&self, item: &Item) -> f64;
    /// Physical multipliers the unit occupies while busy (0 for non-MAC units).
    fn multipliers(&self) -> f64 {
        0.0
    }
}

/// A unit with a fixed rate and energy per unit of work, reading one field of [`Item`].
struct RateUnit {
    name: &'static str,
    rate: f64,
    pj: f64,
    multipliers: f64,
    whole_cycles: bool,
    work: fn(&Item) -> f64,
}

impl Unit for RateUnit {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cycles(&self, item: &Item) -> f64 {
        let c = (self.work)(item) / self.rate;
        if self.whole_cycles {
            c.ceil()
        } else {
            c
        }
    }
    fn energy_pj(&self, item: &Item) -> f64 {
        (self.work)(item) * self.pj
    }
    fn multipliers(&self) -> f64 {
        self.multipliers
    }
}

/// The pruning unit: its cycles come from passes over each block-row (computed with the item),
/// its energy from the comparisons.
struct PruneUnit {
    pj: f64,
}

impl Unit for PruneUnit {
    fn name(&self) -> &'static str {
        "pruning_unit"
    }
    fn cycles(&self, item: &Item) -> f64 {
        item.prune_cycles
    }
    fn energy_pj(&self, item: &Item) -> f64 {
        item.prune_ops * self.pj
    }
}

/// Passes the pruning unit makes over a block-row of `valid` blocks of which it keeps `kept`:
/// one to compare and emit, plus for top-k (when it prunes) the digit-serial search over the
/// importances' bits (18 for b = 1, the RTL's score width, two more per doubling of b for the
/// sums of b x b scores), and for top-p one more pass summing the estimated probabilities.
pub fn prune_passes(hw: &HwConfig, sel: Selection, block_size: u64, valid: u64, kept: u64) -> u64 {
    if kept >= valid || sel == Selection::Threshold {
        return 1;
    }
    let bits = SCORE_BITS + 2 * block_size.max(1).next_power_of_two().trailing_zeros() as u64;
    let search = bits.div_ceil(hw.pruning_unit.search_bits_per_pass.max(1)) + 1;
    match sel {
        Selection::TopP => search + 1,
        _ => search,
    }
}

/// Width of the integer scores the pruning unit searches at b = 1 (`hdp_hw::SCORE_BITS`).
pub const SCORE_BITS: u64 = 18;

/// Per-unit results.
#[derive(Clone, Debug, Serialize)]
pub struct UnitReport {
    /// Unit name.
    pub name: &'static str,
    /// Cycles the unit was busy.
    pub busy_cycles: f64,
    /// busy / total cycles (never above 1).
    pub utilization: f64,
    /// Cycles in which this unit was the slowest stage.
    pub bottleneck_cycles: f64,
    /// Energy, pJ.
    pub energy_pj: f64,
}

/// Results of one simulation.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Configuration name.
    pub hardware: String,
    /// Total cycles.
    pub cycles: f64,
    /// Latency, microseconds.
    pub latency_us: f64,
    /// Dense-equivalent operations (2 per MAC of dense Q.K^T and P.V over valid entries).
    pub dense_equivalent_ops: f64,
    /// Dense-equivalent GOP/s.
    pub throughput_gops: f64,
    /// MACs performed per multiplier per cycle, all arrays together (never above 1).
    pub mac_efficiency: f64,
    /// Total energy, microjoules (dynamic + static).
    pub energy_uj: f64,
    /// Dense-equivalent GOP/s per watt.
    pub gops_per_w: f64,
    /// Cycles where memory (SRAM or DRAM) was the slowest stage.
    pub memory_bound_cycles: f64,
    /// Cycles where a compute unit was the slowest stage.
    pub compute_bound_cycles: f64,
    /// Fill and DRAM-latency cycles not covered by either.
    pub overhead_cycles: f64,
    /// Off-chip bytes.
    pub dram_bytes: f64,
    /// Static energy, microjoules.
    pub static_energy_uj: f64,
    /// Silicon area from the energy/area table, mm^2.
    pub area_mm2: f64,
    /// Per unit.
    pub units: Vec<UnitReport>,
}

/// Energy and area of an integer-engine MAC lane with the centred estimate's operands, relative
/// to the preset's: one more bit per operand (`2 x_int + 1`), a 4x4 multiplier becoming 5x5,
/// and a multiplier's energy and area grow with the product of its operand widths.
pub const CENTRED_INT_MAC_COST: f64 = (5.0 * 5.0) / (4.0 * 4.0);

fn units(hw: &HwConfig, e: &EnergyTable, int_pass: bool, centred: bool) -> Vec<Box<dyn Unit>> {
    let (int, frac) = (
        hw.int_engine.multipliers as f64,
        hw.frac_engine.multipliers as f64,
    );
    // Without an integer pass the score is one full 8x8 product per MAC, built from four 4x4
    // integer-engine multipliers or two 4x8 fraction-engine multipliers.
    let (score_rate, score_pj, score_mults) = if int_pass {
        (frac, e.frac_mac_pj, frac)
    } else {
        (int / 4.0 + frac / 2.0, e.dense_mac_pj, int + frac)
    };
    let sram_kib = (hw.sram.q_kib + hw.sram.k_kib + hw.sram.v_kib) / 3.0;
    vec![
        Box::new(RateUnit {
            name: "int_engine",
            rate: int,
            pj: e.int_mac_pj * if centred { CENTRED_INT_MAC_COST } else { 1.0 },
            multipliers: int,
            whole_cycles: true,
            work: |i| i.int_macs,
        }),
        Box::new(PruneUnit { pj: e.prune_op_pj }),
        Box::new(RateUnit {
            name: if int_pass {
                "frac_engine"
            } else {
                "score_engine"
            },
            rate: score_rate,
            pj: score_pj,
            multipliers: score_mults,
            whole_cycles: true,
            work: |i| i.score_macs,
        }),
        Box::new(RateUnit {
            name: "softmax_unit",
            rate: hw.softmax_unit.exps_per_cycle as f64,
            pj: e.exp_pj,
            multipliers: 0.0,
            whole_cycles: true,
            work: |i| i.exps,
        }),
        Box::new(RateUnit {
            // `dividers` reciprocals every `divider_cycles`; the energy is in the per-exp figure.
            name: "divider",
            rate: hw.softmax_unit.dividers.max(1) as f64
                / hw.softmax_unit.divider_cycles.max(1) as f64,
            pj: 0.0,
            multipliers: 0.0,
            whole_cycles: true,
            work: |i| i.recips,
        }),
        Box::new(RateUnit {
            // One wide multiply per output element.
            name: "normalizer",
            rate: hw.softmax_unit.norm_lanes.max(1) as f64,
            pj: e.sv_mac_pj,
            multipliers: 0.0,
            whole_cycles: true,
            work: |i| i.norms,
        }),
        Box::new(RateUnit {
            name: "sv_engine",
            rate: hw.sv_engine.multipliers as f64,
            pj: e.sv_mac_pj,
            multipliers: hw.sv_engine.multipliers as f64,
            whole_cycles: true,
            work: |i| i.sv_macs,
        }),
        Box::new(RateUnit {
            name: "sram",
            rate: hw.sram.bytes_per_cycle,
            pj: e.sram_pj_per_64b(sram_kib) / 8.0,
            multipliers: 0.0,
            whole_cycles: false,
            work: |i| i.sram_bytes,
        }),
        Box::new(RateUnit {
            name: "dram",
            rate: hw.dram_bytes_per_cycle(),
            pj: e.dram_pj_per_64b / 8.0,
            multipliers: 0.0,
            whole_cycles: false,
            work: |i| i.dram_bytes,
        }),
    ]
}

/// Items of one layer-sequence: (phase A, phase B); phase B is empty when the workload did not
/// use head pruning (everything streams through one pipeline then).
fn items(hw: &HwConfig, l: &LayerWork) -> (Vec<Item>, Vec<Item>) {
    let f = hw.features;
    let int_pass = f.block_pruning || f.head_pruning;
    let d = l.head_dim as f64;
    let code = l.qk_bits as f64 / 8.0;
    let per_entry = if !int_pass {
        d
    } else if f.approximation {
        2.0 * d
    } else {
        3.0 * d
    };
    let qk_bytes = l.valid_tokens as f64 * d * code;
    // K is read once when it fits its buffer, else once per Q-buffer-full of query rows.
    let k_passes = if qk_bytes <= hw.sram.k_kib * 1024.0 {
        1.0
    } else {
        (qk_bytes / (hw.sram.q_kib * 1024.0)).ceil().max(1.0)
    };
    let tile = hw.sram.query_tile_rows;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for h in &l.heads {
        let survives = !(f.head_pruning && h.pruned);
        let barrier = f.head_pruning && l.head_pruning;
        let nrows = h.rows.len().max(1) as f64;
        let v_rows = if f.block_pruning {
            h.v_rows_kept as f64
        } else {
            l.valid_tokens as f64
        };
        let v_bytes = v_rows * d * 2.0;
        let v_passes = if v_bytes <= hw.sram.v_kib * 1024.0 {
            1.0
        } else {
            (qk_bytes / (hw.sram.q_kib * 1024.0)).ceil().max(1.0)
        };
        let out_bytes = l.valid_tokens as f64 * d * 2.0;
        for r in &h.rows {
            let rows = r.rows.max(1) as f64;
            let kept = if f.block_pruning {
                r.kept_entries as f64
            } else {
                r.valid_entries as f64
            };
            let mut ia = Item::default();
            let mut ib = Item::default();
            if int_pass {
                ia.int_macs = r.valid_entries as f64 * d;
                let passes =
                    prune_passes(hw, l.selection, l.block_size, r.valid_blocks, r.kept_blocks);
                let lanes = hw.pruning_unit.blocks_per_cycle.max(1);
                ia.prune_ops = (passes * r.valid_blocks) as f64;
                // Rows shorter than the lanes share them, up to max_row_groups at once.
                let groups =
                    (lanes / r.valid_blocks.max(1)).clamp(1, hw.pruning_unit.max_row_groups.max(1));
                ia.prune_cycles = (passes * r.valid_blocks.div_ceil(lanes)) as f64 / groups as f64;
                // K integer parts of the row's valid columns, shared by a tile of query rows, plus
                // the row's own Q integer parts (integer halves of the codes).
                ia.sram_bytes = (r.valid_entries as f64 / tile + rows) * d * code / 2.0;
            }
            ia.dram_bytes = qk_bytes * (1.0 + k_passes) / nrows;
            if survives {
                ib.score_macs = kept * per_entry;
                ib.exps = kept;
                ib.sv_macs = kept * d;
                ib.recips = rows;
                ib.norms = rows * d;
                if f.block_pruning && l.compensate {
                    // The V sum over valid keys and `c . sum` per query row.
                    ib.sv_macs += 2.0 * rows * d;
                }
                ib.sram_bytes = kept / tile * d * (code + 2.0) + rows * d * code;
                ib.dram_bytes = (v_bytes * v_passes + out_bytes) / nrows;
            }
            if barrier {
                a.push(ia);
                if survives {
                    b.push(ib);
                }
            } else {
                a.push(Item {
                    int_macs: ia.int_macs,
                    prune_ops: ia.prune_ops,
                    prune_cycles: ia.prune_cycles,
                    score_macs: ib.score_macs,
                    exps: ib.exps,
                    sv_macs: ib.sv_macs,
                    recips: ib.recips,
                    norms: ib.norms,
                    sram_bytes: ia.sram_bytes + ib.sram_bytes,
                    dram_bytes: ia.dram_bytes + ib.dram_bytes,
                });
            }
        }
    }
    (a, b)
}

/// The cycles each unit spends on each item of one layer-sequence, phase A's items then phase
/// B's (one item per block-row of each head, in head order), with the unit names: what the
/// pipeline of [`simulate`] overlaps, per stage, for comparison with a core that runs its
/// stages one after another (the RTL's per-stage counters, `crates/hdp-hw`).
pub fn stage_cycles(
    hw: &HwConfig,
    e: &EnergyTable,
    l: &LayerWork,
) -> (Vec<&'static str>, Vec<Vec<f64>>) {
    let int_pass = hw.features.block_pruning || hw.features.head_pruning;
    let units = units(hw, e, int_pass, int_pass && l.centred);
    let (a, b) = items(hw, l);
    let cycles = a
        .iter()
        .chain(&b)
        .map(|i| units.iter().map(|u| u.cycles(i)).collect())
        .collect();
    (units.iter().map(|u| u.name()).collect(), cycles)
}

/// Simulates `w` on `hw`; the clock converts cycles to time here, not in the units.
pub fn simulate(hw: &HwConfig, e: &EnergyTable, w: &Workload) -> Report {
    let int_pass = hw.features.block_pruning || hw.features.head_pruning;
    // A workload ranked with the centred estimate needs the wider integer engine.
    let centred = int_pass && w.layers.iter().any(|l| l.centred);
    let units = units(hw, e, int_pass, centred);
    let latency_cycles = hw.dram.latency_ns * 1e-3 * hw.clock_mhz;
    let mut busy = vec![0.0; units.len()];
    let mut bottleneck = vec![0.0; units.len()];
    let mut energy = vec![0.0; units.len()];
    let (mut cycles, mut overhead, mut dense_macs, mut dram_bytes) = (0.0, 0.0, 0.0, 0.0);
    let mut c = vec![0.0; units.len()];
    for l in &w.layers {
        dense_macs += l
            .heads
            .iter()
            .flat_map(|h| &h.rows)
            .map(|r| r.valid_entries as f64)
            .sum::<f64>()
            * l.head_dim as f64;
        let (a, b) = items(hw, l);
        for phase in [a, b] {
            if phase.is_empty() {
                continue;
            }
            for (k, item) in phase.iter().enumerate() {
                for (u, unit) in units.iter().enumerate() {
                    c[u] = unit.cycles(item);
                    busy[u] += c[u];
                    energy[u] += unit.energy_pj(item);
                }
                let (arg, max) =
                    c.iter()
                        .enumerate()
                        .fold((0, 0.0f64), |m, (u, &x)| if x > m.1 { (u, x) } else { m });
                cycles += max;
                bottleneck[arg] += max;
                if k == 0 {
                    let fill = c.iter().sum::<f64>() - max + latency_cycles;
                    cycles += fill;
                    overhead += fill;
                }
                dram_bytes += item.dram_bytes;
            }
        }
    }
    let cycles = cycles.max(1.0);
    let seconds = cycles / (hw.clock_mhz * 1e6);
    let static_pj = hw.static_mw * 1e-3 * seconds * 1e12;
    let energy_pj = energy.iter().sum::<f64>() + static_pj;
    let dense_equivalent_ops = 4.0 * dense_macs;
    let used_mults: f64 = units
        .iter()
        .zip(&busy)
        .map(|(u, b)| u.multipliers() * b)
        .sum();
    let memory: f64 = units
        .iter()
        .zip(&bottleneck)
        .filter(|(u, _)| matches!(u.name(), "sram" | "dram"))
        .map(|(_, b)| b)
        .sum();
    Report {
        hardware: hw.name.clone(),
        cycles,
        latency_us: seconds * 1e6,
        dense_equivalent_ops,
        throughput_gops: dense_equivalent_ops / seconds / 1e9,
        mac_efficiency: used_mults / (hw.total_multipliers() as f64 * cycles),
        energy_uj: energy_pj * 1e-6,
        gops_per_w: dense_equivalent_ops / (energy_pj * 1e-12) / 1e9,
        memory_bound_cycles: memory,
        compute_bound_cycles: bottleneck.iter().sum::<f64>() - memory,
        overhead_cycles: overhead,
        dram_bytes,
        static_energy_uj: static_pj * 1e-6,
        area_mm2: hw.area_mm2(e)
            + if centred {
                hw.int_engine.multipliers as f64
                    * e.int_mac_um2
                    * (CENTRED_INT_MAC_COST - 1.0)
                    * 1e-6
            } else {
                0.0
            },
        units: units
            .iter()
            .enumerate()
            .map(|(u, unit)| UnitReport {
                name: unit.name(),
                busy_cycles: busy[u],
                utilization: busy[u] / cycles,
                bottleneck_cycles: bottleneck[u],
                energy_pj: energy[u],
            })
            .collect(),
    }
}
