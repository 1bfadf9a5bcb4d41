//! Hardware presets and energy tables, read from TOML files users edit without touching code
//! (`presets/*.toml`). The built-in names `edge`, `server`, `dense-edge` and `dense-server` are
//! the repository's preset files compiled in.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// HDP features the hardware uses; all off = the dense baseline of the same multipliers.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// Skip pruned blocks (otherwise every valid block is scored at full precision).
    pub block_pruning: bool,
    /// Skip pruned heads after their integer pass.
    pub head_pruning: bool,
    /// Drop Q_frac.K_frac (2 partial products per score instead of 3).
    pub approximation: bool,
}

/// A multiplier array.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Array {
    /// Multipliers (MACs per cycle).
    pub multipliers: u64,
}

/// The pruning unit.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PruningUnit {
    /// Block importances accumulated and compared per cycle.
    pub blocks_per_cycle: u64,
    /// Bits of a top-k threshold decided per pass over a block-row (`R`: each lane compares
    /// with `2^R - 1` candidates at once), as the RTL's digit-serial search does; a top-k row
    /// that prunes costs `ceil(score bits / R) + 1` passes (see [`crate::sim`]).
    #[serde(default = "default_search_bits")]
    pub search_bits_per_pass: u64,
    /// Block-rows searched at once when they are short: the lanes split into up to this many
    /// groups of at least a row each (own counters and threshold), so a pass over a row
    /// shorter than half the lanes costs a fraction of a cycle. 1 = one row at a time, as the
    /// RTL core (modelled; not in the RTL).
    #[serde(default = "default_row_groups")]
    pub max_row_groups: u64,
}

fn default_row_groups() -> u64 {
    1
}

fn default_search_bits() -> u64 {
    3
}

fn default_divider_cycles() -> u64 {
    1
}

fn default_dividers() -> u64 {
    1
}

fn default_norm_lanes() -> u64 {
    4
}

/// The softmax unit.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SoftmaxUnit {
    /// Exponentials (with their share of the divide) per cycle.
    pub exps_per_cycle: u64,
    /// Cycles between the reciprocals `1 / Z` (one per query row, which normalization waits
    /// for) that one divider can start: 41 for the RTL's iterative restoring divider (one
    /// quotient bit per cycle), 1 for the same 41 steps pipelined (41 times the steps' area).
    #[serde(default = "default_divider_cycles")]
    pub divider_cycles: u64,
    /// Dividers working on different rows at once (rows overlap in the pipeline; the RTL core,
    /// which runs one row at a time, has one).
    #[serde(default = "default_dividers")]
    pub dividers: u64,
    /// Output elements normalized (`acc x 1/Z`, one wide multiplier each) per cycle.
    #[serde(default = "default_norm_lanes")]
    pub norm_lanes: u64,
}

/// On-chip buffers.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sram {
    /// Q buffer, KiB.
    pub q_kib: f64,
    /// K buffer, KiB.
    pub k_kib: f64,
    /// V buffer, KiB.
    pub v_kib: f64,
    /// Read bandwidth of the buffers together, bytes per cycle.
    pub bytes_per_cycle: f64,
    /// Query rows processed together against each K/V read (register-level reuse): a K or V
    /// value fetched from SRAM serves this many query rows.
    pub query_tile_rows: f64,
}

/// Off-chip memory channel.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dram {
    /// Bandwidth, GB/s.
    pub gb_per_s: f64,
    /// Latency of a new stream, ns.
    pub latency_ns: f64,
}

/// A hardware configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HwConfig {
    /// Display name.
    pub name: String,
    /// Clock, MHz.
    pub clock_mhz: f64,
    /// Energy table file, relative to the preset file.
    pub energy_table: String,
    /// Static power (leakage, clock), mW.
    pub static_mw: f64,
    /// HDP features.
    pub features: Features,
    /// Integer score engine (Q_int.K_int).
    pub int_engine: Array,
    /// Pruning unit.
    pub pruning_unit: PruningUnit,
    /// Fraction engine (kept blocks).
    pub frac_engine: Array,
    /// Softmax unit.
    pub softmax_unit: SoftmaxUnit,
    /// S.V engine.
    pub sv_engine: Array,
    /// Buffers.
    pub sram: Sram,
    /// Off-chip channel.
    pub dram: Dram,
}

/// Energy per operation and access (pJ), with the source and process node it comes from.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnergyTable {
    /// Where the numbers come from.
    pub source: String,
    /// Process node, nm.
    pub process_nm: u32,
    /// Integer-part MAC.
    pub int_mac_pj: f64,
    /// Fraction MAC.
    pub frac_mac_pj: f64,
    /// Full-precision score MAC of the dense baseline.
    pub dense_mac_pj: f64,
    /// P.V MAC.
    pub sv_mac_pj: f64,
    /// One exponential.
    pub exp_pj: f64,
    /// One pruning-unit block operation.
    pub prune_op_pj: f64,
    /// SRAM access per 64 bits for an 8 KiB buffer.
    pub sram_pj_per_64b_8kib: f64,
    /// DRAM access per 64 bits.
    pub dram_pj_per_64b: f64,
    /// Area of one integer-engine MAC lane, um^2.
    pub int_mac_um2: f64,
    /// Area of one fraction-engine MAC lane, um^2.
    pub frac_mac_um2: f64,
    /// Area of one S.V MAC lane, um^2.
    pub sv_mac_um2: f64,
    /// Area of one exponential unit, um^2.
    pub exp_unit_um2: f64,
    /// Area of one pruning-unit lane, um^2.
    pub prune_lane_um2: f64,
    /// SRAM area per bit, um^2.
    pub sram_um2_per_bit: f64,
}

impl EnergyTable {
    /// Every energy and area must be a finite number > 0 (a negative or NaN entry would make
    /// every energy figure meaningless), and the process node at least 1 nm.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let fields = [
            ("int_mac_pj", self.int_mac_pj),
            ("frac_mac_pj", self.frac_mac_pj),
            ("dense_mac_pj", self.dense_mac_pj),
            ("sv_mac_pj", self.sv_mac_pj),
            ("exp_pj", self.exp_pj),
            ("prune_op_pj", self.prune_op_pj),
            ("sram_pj_per_64b_8kib", self.sram_pj_per_64b_8kib),
            ("dram_pj_per_64b", self.dram_pj_per_64b),
            ("int_mac_um2", self.int_mac_um2),
            ("frac_mac_um2", self.frac_mac_um2),
            ("sv_mac_um2", self.sv_mac_um2),
            ("exp_unit_um2", self.exp_unit_um2),
            ("prune_lane_um2", self.prune_lane_um2),
            ("sram_um2_per_bit", self.sram_um2_per_bit),
        ];
        for (name, v) in fields {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a finite number > 0, got {v}"));
            }
        }
        if self.process_nm == 0 {
            return Err("process_nm must be at least 1".into());
        }
        Ok(())
    }

    /// SRAM energy per 64 bits for a buffer of `kib` KiB: `(kib / 8)^0.4745` times the 8 KiB
    /// figure, which reproduces the table's 10 pJ (8 KiB) to 100 pJ (1 MiB).
    pub fn sram_pj_per_64b(&self, kib: f64) -> f64 {
        self.sram_pj_per_64b_8kib * (kib.max(1.0) / 8.0).powf(0.4745)
    }
}

const BUILTIN: [(&str, &str); 4] = [
    ("edge", include_str!("../../../presets/hdpa-edge.toml")),
    ("server", include_str!("../../../presets/hdpa-server.toml")),
    (
        "dense-edge",
        include_str!("../../../presets/dense-edge.toml"),
    ),
    (
        "dense-server",
        include_str!("../../../presets/dense-server.toml"),
    ),
];
const BUILTIN_ENERGY: &str = include_str!("../../../presets/energy-45nm.toml");

fn parse<T: serde::de::DeserializeOwned>(text: &str, origin: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| Error::Config {
        path: origin.into(),
        reason: e.to_string(),
    })
}

impl HwConfig {
    /// Checks that every count and rate is positive.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let pos = [
            ("clock_mhz", self.clock_mhz),
            ("int_engine.multipliers", self.int_engine.multipliers as f64),
            (
                "pruning_unit.blocks_per_cycle",
                self.pruning_unit.blocks_per_cycle as f64,
            ),
            (
                "frac_engine.multipliers",
                self.frac_engine.multipliers as f64,
            ),
            (
                "softmax_unit.exps_per_cycle",
                self.softmax_unit.exps_per_cycle as f64,
            ),
            (
                "softmax_unit.divider_cycles",
                self.softmax_unit.divider_cycles as f64,
            ),
            ("softmax_unit.dividers", self.softmax_unit.dividers as f64),
            (
                "pruning_unit.max_row_groups",
                self.pruning_unit.max_row_groups as f64,
            ),
            (
                "softmax_unit.norm_lanes",
                self.softmax_unit.norm_lanes as f64,
            ),
            ("sv_engine.multipliers", self.sv_engine.multipliers as f64),
            ("sram.q_kib", self.sram.q_kib),
            ("sram.k_kib", self.sram.k_kib),
            ("sram.v_kib", self.sram.v_kib),
            ("sram.bytes_per_cycle", self.sram.bytes_per_cycle),
            ("sram.query_tile_rows", self.sram.query_tile_rows),
            ("dram.gb_per_s", self.dram.gb_per_s),
        ];
        for (name, v) in pos {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, got {v}"));
            }
            // Far beyond any chip, and small enough that totals and products of unit counts
            // cannot overflow.
            if v > MAX_UNIT_COUNT {
                return Err(format!("{name} = {v} exceeds {MAX_UNIT_COUNT:e}"));
            }
        }
        if ![1, 2, 3, 6].contains(&self.pruning_unit.search_bits_per_pass) {
            return Err(format!(
                "pruning_unit.search_bits_per_pass must be 1, 2, 3 or 6 (a divisor of the 18-bit \
                 score), got {}",
                self.pruning_unit.search_bits_per_pass
            ));
        }
        if !(self.dram.latency_ns.is_finite()
            && self.static_mw.is_finite()
            && self.dram.latency_ns >= 0.0
            && self.static_mw >= 0.0)
        {
            return Err("dram.latency_ns and static_mw must be >= 0".into());
        }
        Ok(())
    }

    /// Multipliers of all arrays together.
    pub fn total_multipliers(&self) -> u64 {
        self.int_engine.multipliers + self.frac_engine.multipliers + self.sv_engine.multipliers
    }

    /// Silicon area of the arrays, units and buffers, mm^2 (no DRAM controller or wiring).
    pub fn area_mm2(&self, e: &EnergyTable) -> f64 {
        let um2 = self.int_engine.multipliers as f64 * e.int_mac_um2
            + self.frac_engine.multipliers as f64 * e.frac_mac_um2
            + self.sv_engine.multipliers as f64 * e.sv_mac_um2
            + self.softmax_unit.exps_per_cycle as f64 * e.exp_unit_um2
            + self.pruning_unit.blocks_per_cycle as f64 * e.prune_lane_um2
            + (self.sram.q_kib + self.sram.k_kib + self.sram.v_kib) * 8192.0 * e.sram_um2_per_bit;
        um2 * 1e-6
    }

    /// DRAM bytes per clock cycle.
    pub fn dram_bytes_per_cycle(&self) -> f64 {
        self.dram.gb_per_s * 1e9 / (self.clock_mhz * 1e6)
    }
}

/// Largest value accepted for any unit count, size or rate of a preset.
pub const MAX_UNIT_COUNT: f64 = 1e9;

/// Loads a preset: a built-in name or a TOML file, with its energy table.
pub fn load_preset(name_or_path: &str) -> Result<(HwConfig, EnergyTable)> {
    let (hw, energy): (HwConfig, EnergyTable) =
        match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, text)) => {
                let origin = PathBuf::from(format!("<built-in {n}>"));
                (parse(text, &origin)?, parse(BUILTIN_ENERGY, &origin)?)
            }
            None => {
                let path = Path::new(name_or_path);
                let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
                    path: path.into(),
                    reason: format!(
                    "{e}; use a built-in preset ({}) or a TOML file like presets/hdpa-edge.toml",
                    BUILTIN.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
                ),
                })?;
                let hw: HwConfig = parse(&text, path)?;
                let epath = path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(&hw.energy_table);
                let etext = std::fs::read_to_string(&epath).map_err(|e| Error::Config {
                    path: epath.clone(),
                    reason: format!("{e} (energy_table of {})", path.display()),
                })?;
                let energy = parse(&etext, &epath)?;
                (hw, energy)
            }
        };
    validate_preset(&hw, &energy, name_or_path)?;
    Ok((hw, energy))
}

fn validate_preset(hw: &HwConfig, energy: &EnergyTable, origin: &str) -> Result<()> {
    hw.validate().map_err(|reason| Error::Config {
        path: origin.into(),
        reason,
    })?;
    energy.validate().map_err(|reason| Error::Config {
        path: format!("energy table of {origin}").into(),
        reason,
    })
}

/// Parses and validates a preset and its energy table from TOML text (what [`load_preset`]
/// does after reading the files); `origin` names them in errors.
pub fn parse_preset(
    hw_text: &str,
    energy_text: &str,
    origin: &str,
) -> Result<(HwConfig, EnergyTable)> {
    let hw: HwConfig = parse(hw_text, Path::new(origin))?;
    let energy: EnergyTable = parse(energy_text, Path::new(origin))?;
    validate_preset(&hw, &energy, origin)?;
    Ok((hw, energy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_load_and_dense_matches_multipliers() {
        for (n, _) in BUILTIN {
            load_preset(n).unwrap();
        }
        let (edge, e) = load_preset("edge").unwrap();
        let (dense, _) = load_preset("dense-edge").unwrap();
        assert_eq!(edge.total_multipliers(), dense.total_multipliers());
        assert!(!dense.features.block_pruning && !dense.features.head_pruning);
        assert!((e.sram_pj_per_64b(1024.0) - 100.0).abs() < 1.0);
    }

    #[test]
    fn bad_files_are_clear() {
        let dir = std::env::temp_dir().join(format!("hdp-sim-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, "name = 3").unwrap();
        assert!(load_preset(p.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("bad.toml"));
        let text = include_str!("../../../presets/hdpa-edge.toml")
            .replace("multipliers = 256", "multipliers = 0");
        std::fs::write(dir.join("energy-45nm.toml"), BUILTIN_ENERGY).unwrap();
        let p = dir.join("zero.toml");
        std::fs::write(&p, text).unwrap();
        assert!(load_preset(p.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("int_engine.multipliers"));
        assert!(load_preset("nonexistent-preset").is_err());
    }

    /// Issue #11: negative, zero, NaN and infinite table values used to be accepted.
    #[test]
    fn nonsense_tables_are_rejected() {
        let (_, e) = load_preset("edge").unwrap();
        for v in [-1.0, 0.0, f64::NAN, f64::INFINITY] {
            let bad = EnergyTable {
                int_mac_pj: v,
                ..e.clone()
            };
            assert!(bad.validate().is_err(), "{v}");
        }
        let (hw, _) = load_preset("edge").unwrap();
        let mut big = hw.clone();
        big.int_engine.multipliers = u64::MAX;
        assert!(big.validate().is_err());
        let dir = std::env::temp_dir().join(format!("hdp-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("peers.toml");
        std::fs::write(
            &p,
            "[[peer]]\nname = \"x\"\nthroughput_gops_128 = -5.0\nsource = \"y\"\n",
        )
        .unwrap();
        let err = load_peers(Some(&p)).unwrap_err().to_string();
        assert!(err.contains("throughput_gops_128"), "{err}");
    }
}

/// A published accelerator figure (`presets/peers.toml`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Design and venue.
    pub name: String,
    /// Published throughput normalized to 128 multipliers at 1 GHz, GOP/s.
    pub throughput_gops_128: Option<f64>,
    /// Published energy efficiency, GOP/s per W.
    pub gops_per_w: Option<f64>,
    /// Where the figure comes from.
    pub source: String,
}

#[derive(Deserialize)]
struct PeerFile {
    peer: Vec<Peer>,
}

/// The built-in peers table, or one read from `path`.
pub fn load_peers(path: Option<&Path>) -> Result<Vec<Peer>> {
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| Error::Config {
                path: p.into(),
                reason: e.to_string(),
            })?,
            p.to_path_buf(),
        ),
        None => (
            include_str!("../../../presets/peers.toml").to_string(),
            PathBuf::from("<built-in peers>"),
        ),
    };
    parse_peers(&text, &origin)
}

/// Parses and validates a peers table from TOML text; `origin` names it in errors.
pub fn parse_peers(text: &str, origin: &Path) -> Result<Vec<Peer>> {
    let origin = origin.to_path_buf();
    let peers = parse::<PeerFile>(text, &origin)?.peer;
    for p in &peers {
        for (name, v) in [
            ("throughput_gops_128", p.throughput_gops_128),
            ("gops_per_w", p.gops_per_w),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(Error::Config {
                    path: origin,
                    reason: format!(
                        "peer {:?}: {name} must be a finite number > 0, got {v}",
                        p.name
                    ),
                });
            }
        }
    }
    Ok(peers)
}

/// Throughput scaled to 128 multipliers at 1 GHz (the peers' normalization).
pub fn normalized_gops_128(gops: f64, hw: &HwConfig) -> f64 {
    gops * 128.0 / hw.total_multipliers() as f64 * 1000.0 / hw.clock_mhz
}
