//! HDPA: a transaction-level cycle model of the HDP accelerator (`shared/design/hdp.md`, last
//! section) and of a dense accelerator with the same multipliers, driven by HDP traces or by
//! synthetic workloads. Hardware lives in TOML presets (`presets/`), workloads in
//! [`workload`], the timing and energy model in [`sim`].

#![warn(missing_docs)]

pub mod config;
pub mod sim;
pub mod workload;

pub use config::{load_peers, load_preset, normalized_gops_128, EnergyTable, HwConfig, Peer};
pub use sim::{prune_passes, simulate, stage_cycles, Report, CENTRED_INT_MAC_COST};
pub use workload::{HeadWork, LayerWork, ModelShape, RowWork, Selection, Workload};

use std::path::PathBuf;

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A preset or energy file that cannot be read or is invalid.
    #[error("hardware config {path}: {reason}")]
    Config {
        /// The file (or built-in name).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An invalid workload request.
    #[error("{0}")]
    Invalid(String),
    /// A core error (e.g. a workload larger than the element budget).
    #[error(transparent)]
    Core(#[from] hdp_core::Error),
}

/// Result alias of the simulator.
pub type Result<T> = std::result::Result<T, Error>;
