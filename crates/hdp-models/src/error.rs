//! Errors of the model runtime. Each says which file or input was wrong and what to do.

use std::path::PathBuf;

/// Model loading and inference errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model folder or file that cannot be read.
    #[error("cannot read {path}: {source}. A model folder needs config.json, model.safetensors and tokenizer.json (run python3 scripts/fetch_assets.py for the default model)")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// config.json that does not parse or describes an unsupported model.
    #[error("bad model config {path}: {reason}")]
    Config {
        /// The path of config.json.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Weights that are missing, truncated or do not match the config.
    #[error("bad model weights {path}: {reason}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong (from the loader).
        reason: String,
    },
    /// A tokenizer file that does not load, or a text it cannot encode.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A request the model cannot serve (e.g. a max length beyond its positions).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The attention implementation rejected its input.
    #[error(transparent)]
    Attention(#[from] hdp_core::Error),
}

/// Result alias of the model crate.
pub type Result<T> = std::result::Result<T, Error>;
