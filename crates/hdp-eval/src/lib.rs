//! What HDP attention costs in accuracy on real models and labeled data: the packaged data sets,
//! metrics, a logistic-regression head on frozen embeddings, and the evaluation tasks
//! (`rt-sentiment`, `lee-similarity`, `fidelity`, or a user's file), dense and HDP side by side.

#![warn(missing_docs)]

pub mod calibrate;
pub mod data;
pub mod logreg;
pub mod metrics;
pub mod sweep;
pub mod tasks;

use std::path::PathBuf;

/// Evaluation errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file that is missing or malformed.
    #[error("data file {path}: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The model runtime failed.
    #[error(transparent)]
    Model(#[from] hdp_models::Error),
    /// A core error (options, files).
    #[error(transparent)]
    Core(#[from] hdp_core::Error),
    /// An unknown task or inconsistent request.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the evaluation crate.
pub type Result<T> = std::result::Result<T, Error>;
