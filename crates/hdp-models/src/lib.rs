//! Hugging Face-layout transformer models for hdp, with attention as a plug-in: BERT (and
//! sentence-transformers models built on it) with its own CPU forward pass (row-invariant
//! packed dense layers, [`linear`]), dense or HDP attention from `hdp-attention`, tokenization
//! with `tokenizers`.

#![warn(missing_docs)]

pub mod backend;
pub mod bert;
pub mod config;
pub mod embedder;
mod error;
pub mod linear;

pub use backend::{AttentionBackend, CaptureQkv, DenseFast, DenseReference, HdpBackend, HdpKernel};
pub use embedder::{assets_dir, default_model_dir, Encoded, SentenceEmbedder};
pub use error::{Error, Result};
