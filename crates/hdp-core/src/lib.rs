//! Core types of hdp: the error type, signed fixed point ([`QFormat`]), a minimal tensor, the
//! named test tolerances, a seedable PRNG and the trace format that links the attention code to
//! the accelerator simulator. Method definition: `shared/design/hdp.md`.

#![warn(missing_docs)]

pub mod bits;
pub mod budget;
pub mod calibration;
pub mod config;
mod error;
pub mod fixed;
pub mod io;
pub mod npy;
pub mod options;
pub mod rng;
pub mod tensor;
pub mod tolerance;
pub mod trace;

pub use calibration::Calibration;
pub use config::{
    bf16_round, BlockImportance, Compensation, HdpConfig, HeadImportance, HeadPruning, Prescale,
    PrunedHeadOutput, PvPrecision, RowThreshold, ScoreMode, ValidConfig,
};
pub use error::{Error, Result};
pub use fixed::{QFormat, Quantized};
pub use options::{GivenValue, HdpOptions};
pub use tensor::Tensor;
pub use trace::{BlockMask, OpCounts, Trace, TraceSummary};
