//! `config.json` of Hugging Face-layout models. The architecture comes from `model_type` through
//! a serde-tagged enum; field names are the keys of `config.json`.

use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// BERT configuration (the keys hdp uses; others are ignored).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Activation of the feed-forward layer.
    pub hidden_act: Activation,
    /// Learned positions, i.e. the longest sequence the model supports.
    pub max_position_embeddings: usize,
    /// Token type (segment) vocabulary.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Position embedding kind; only "absolute" is supported.
    #[serde(default = "default_position_kind")]
    pub position_embedding_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_kind() -> String {
    "absolute".into()
}

/// Activation functions found in BERT-family configs.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `x Phi(x)` with the error function.
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
    /// ReLU.
    Relu,
}

/// Supported architectures, chosen by `model_type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "model_type", rename_all = "snake_case")]
pub enum ModelConfig {
    /// BERT and its sentence-transformer descendants (MiniLM, MPNet-free BERT variants).
    Bert(BertConfig),
}

impl BertConfig {
    /// Head dimension d.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.max_position_embeddings == 0 || self.num_hidden_layers == 0 {
            return Err("max_position_embeddings and num_hidden_layers must be positive".into());
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| Error::Config {
            path: path.into(),
            reason,
        })
    }

    /// Parses and validates config JSON text.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let cfg: ModelConfig = serde_json::from_str(text).map_err(|e| {
            format!("{e} (supported model_type values: \"bert\"; see the model's config.json)")
        })?;
        match &cfg {
            ModelConfig::Bert(b) => b.validate()?,
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"{"model_type":"bert","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,
        "num_attention_heads":2,"intermediate_size":16,"hidden_act":"gelu","max_position_embeddings":12}"#;

    #[test]
    fn parses_bert_and_rejects_others() {
        let ModelConfig::Bert(b) = ModelConfig::from_json(MINI).unwrap();
        assert_eq!(b.head_dim(), 4);
        let gpt = MINI.replace("\"bert\"", "\"gpt2\"");
        assert!(ModelConfig::from_json(&gpt).unwrap_err().contains("gpt2"));
        let bad_heads = MINI.replace("\"num_attention_heads\":2", "\"num_attention_heads\":3");
        assert!(ModelConfig::from_json(&bad_heads)
            .unwrap_err()
            .contains("multiple"));
        let bad_act = MINI.replace("\"gelu\"", "\"swish\"");
        assert!(ModelConfig::from_json(&bad_act).is_err());
    }
}
