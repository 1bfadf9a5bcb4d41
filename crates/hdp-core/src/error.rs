//! The one error type of `hdp-core`: every variant says what was wrong and, where it helps,
//! what to do about it.

use std::path::PathBuf;

/// Errors raised by the core types (fixed point, tensors, traces).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A fixed-point format outside the supported range.
    #[error("invalid fixed-point format bits={bits}, frac_bits={frac_bits}: {reason}")]
    InvalidFormat {
        /// Total bits requested.
        bits: u32,
        /// Fractional bits requested.
        frac_bits: u32,
        /// Why it is invalid and what is allowed.
        reason: String,
    },
    /// An option value outside its allowed range.
    #[error("invalid value {value} for {name}: expected {expected}")]
    InvalidOption {
        /// Option name as the user would type it.
        name: &'static str,
        /// The offending value, printed.
        value: String,
        /// The allowed range, in words.
        expected: String,
    },
    /// Tensor shapes that do not fit together.
    #[error("shape mismatch in {op}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Operation that checked the shapes.
        op: &'static str,
        /// What was expected, in words or as a shape.
        expected: String,
        /// What was received.
        got: String,
    },
    /// A NaN or infinity in an input tensor.
    #[error("tensor {tensor} holds a non-finite value ({value}) at flat index {index}; clean the input (NaN/Inf cannot be quantized or softmaxed)")]
    NonFinite {
        /// Name of the tensor.
        tensor: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The value itself.
        value: f32,
    },
    /// A size computed from the input that overflows or exceeds the element budget.
    #[error("{what} of shape {dims:?} is larger than the budget of {limit} elements; use smaller inputs, or raise the budget with --max-elements (or HDP_MAX_ELEMENTS) if this machine has the memory")]
    TooLarge {
        /// What would have been allocated.
        what: String,
        /// Its dimensions.
        dims: Vec<usize>,
        /// The budget in force.
        limit: usize,
    },
    /// A file that could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose contents do not parse.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The path involved.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
}

/// Result alias for the core crate.
pub type Result<T> = std::result::Result<T, Error>;
