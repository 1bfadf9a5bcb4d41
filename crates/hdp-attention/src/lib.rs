//! Attention for hdp: dense float attention and Hybrid Dynamic Pruning attention, as plain
//! reference implementations (`shared/design/hdp.md`), plus a documented synthetic input
//! generator. Fast kernels live beside these and are tested against them.

#![warn(missing_docs)]

#[macro_use]
mod macros;

pub mod dense;
pub mod fast;
pub mod hdp;
pub mod int8;
mod kernels;
pub mod problem;
mod simd;
pub mod synthetic;

pub use hdp::HdpOutput;
/// The HDP options live in `hdp-core` (the trace carries them); re-exported here.
pub use hdp_core::config;
pub use hdp_core::config::{
    BlockImportance, HdpConfig, HeadImportance, HeadPruning, Prescale, PrunedHeadOutput,
    RowThreshold, ValidConfig,
};
pub use hdp_core::{Error, Result};
pub use problem::{AttentionProblem, Dims};

/// Name and version written into traces produced by the fast kernels.
pub const FAST_PRODUCER: &str = concat!("hdp-attention fast ", env!("CARGO_PKG_VERSION"));

/// Name and version written into traces produced by the reference implementation.
pub const REFERENCE_PRODUCER: &str = concat!("hdp-attention reference ", env!("CARGO_PKG_VERSION"));

/// Runs HDP attention on one layer and wraps its trace in a complete [`hdp_core::Trace`].
pub fn hdp_with_trace(
    p: &AttentionProblem,
    cfg: &ValidConfig,
) -> Result<(hdp_core::Tensor, hdp_core::Trace)> {
    let out = hdp::attention(p, cfg, 0)?;
    let mut trace = hdp_core::Trace::new(REFERENCE_PRODUCER, *cfg);
    trace.layers.push(out.trace);
    Ok((out.output, trace))
}
