//! Attention for hdp: dense float attention and Hybrid Dynamic Pruning attention, as plain
//! reference implementations (`shared/design/hdp.md`), plus a documented synthetic input
//! generator. Fast kernels live beside these and are tested against them.

#![warn(missing_docs)]

#[macro_use]
mod macros;

pub mod config;
pub mod dense;
pub mod fast;
pub mod hdp;
pub mod int8;
pub mod problem;
mod simd;
pub mod synthetic;

pub use config::{
    BlockImportance, HdpConfig, HeadImportance, HeadPruning, Prescale, PrunedHeadOutput,
    RowThreshold,
};
pub use hdp::HdpOutput;
pub use hdp_core::{Error, Result};
pub use problem::{AttentionProblem, Dims};

/// Name and version written into traces produced by the fast kernels.
pub const FAST_PRODUCER: &str = concat!("hdp-attention fast ", env!("CARGO_PKG_VERSION"));

/// Name and version written into traces produced by the reference implementation.
pub const REFERENCE_PRODUCER: &str = concat!("hdp-attention reference ", env!("CARGO_PKG_VERSION"));

/// Runs HDP attention on one layer and wraps its trace in a complete [`hdp_core::Trace`].
pub fn hdp_with_trace(
    p: &AttentionProblem,
    cfg: &HdpConfig,
) -> Result<(hdp_core::Tensor, hdp_core::Trace)> {
    let out = hdp::attention(p, cfg, 0)?;
    let config = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    let mut trace = hdp_core::Trace::new(REFERENCE_PRODUCER, config);
    trace.layers.push(out.trace);
    Ok((out.output, trace))
}
