//! Sentence embeddings as sentence-transformers computes them for BERT models: tokenize, run the
//! encoder, pool over real tokens (mean or CLS, per `1_Pooling/config.json`), L2-normalize.
//! Texts are never padded (see [`crate::bert`]), so a text's embedding does not depend on the
//! batch it shares; output rows keep the input order.

use crate::backend::AttentionBackend;
use crate::bert::{BertModel, Hidden, Profile};
use crate::config::ModelConfig;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizers::{Tokenizer, TruncationParams};

/// Pooling over token states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real (unpadded) tokens.
    Mean,
    /// The first token ([CLS]).
    Cls,
}

/// One tokenized text.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids.
    pub type_ids: Vec<u32>,
    /// Whether the text was cut to the maximum length.
    pub truncated: bool,
}

/// A loaded model folder, ready to embed texts.
pub struct SentenceEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    max_length: usize,
    /// Pooling from `1_Pooling/config.json` (mean if absent).
    pub pooling: Pooling,
    /// Whether sentence-transformers normalizes this model's output (a `Normalize` module in
    /// `modules.json`).
    pub normalizes: bool,
    profile: Mutex<Profile>,
    /// Most tokens per forward pass (bounds the activations' memory; default
    /// [`DEFAULT_MAX_BATCH_TOKENS`]).
    pub max_batch_tokens: usize,
    /// The model folder.
    pub dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.into(),
        source,
    }
}

impl SentenceEmbedder {
    /// Loads `config.json`, `model.safetensors`, `tokenizer.json` and the sentence-transformers
    /// settings from a Hugging Face-layout folder.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
            });
        }
        let cfg_path = dir.join("config.json");
        let ModelConfig::Bert(cfg) = ModelConfig::from_file(&cfg_path)?;
        let weights_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(io(&weights_path))?;
        let model = BertModel::load(&bytes, &weights_path, &cfg)?;
        drop(bytes);
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(Error::Io {
                path: tokenizer_path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
            });
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::Tokenizer {
            path: tokenizer_path.clone(),
            reason: e.to_string(),
        })?;
        let json = |p: PathBuf| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
        };
        let pooling = match json(dir.join("1_Pooling/config.json")) {
            Some(v) if v["pooling_mode_cls_token"] == true => Pooling::Cls,
            _ => Pooling::Mean,
        };
        let normalizes = json(dir.join("modules.json")).is_some_and(|m| {
            m.as_array().is_some_and(|mods| {
                mods.iter()
                    .any(|x| x["type"].as_str().is_some_and(|t| t.ends_with("Normalize")))
            })
        });
        let max_length = json(dir.join("sentence_bert_config.json"))
            .and_then(|v| v["max_seq_length"].as_u64())
            .map_or(cfg.max_position_embeddings, |m| m as usize)
            .min(cfg.max_position_embeddings);
        let mut e = SentenceEmbedder {
            model,
            tokenizer,
            tokenizer_path,
            max_length,
            pooling,
            normalizes,
            profile: Mutex::default(),
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            dir: dir.into(),
        };
        e.set_max_length(max_length)?;
        Ok(e)
    }

    /// The model's configuration.
    pub fn config(&self) -> &crate::config::BertConfig {
        &self.model.config
    }

    /// The instruction-set tier of the dense layers.
    pub fn model_tier(&self) -> crate::linear::Tier {
        self.model.tier()
    }

    /// Seconds per forward stage over every call so far (and resets nothing).
    pub fn profile(&self) -> Profile {
        self.profile.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Current maximum tokens per text (special tokens included).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Sets the maximum tokens per text; longer texts are truncated. At most the model's
    /// `max_position_embeddings`.
    pub fn set_max_length(&mut self, n: usize) -> Result<()> {
        let limit = self.model.config.max_position_embeddings;
        if n < 2 || n > limit {
            return Err(Error::InvalidInput(format!(
                "max length {n} is outside 2..={limit} (the model has {limit} positions)"
            )));
        }
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: n,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                path: self.tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        self.tokenizer.with_padding(None);
        self.max_length = n;
        Ok(())
    }

    /// Tokenizes texts (special tokens added, truncated to the maximum length).
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        texts
            .iter()
            .map(|t| {
                let e = self
                    .tokenizer
                    .encode(t.as_ref(), true)
                    .map_err(|e| Error::Tokenizer {
                        path: self.tokenizer_path.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(Encoded {
                    ids: e.get_ids().to_vec(),
                    type_ids: e.get_type_ids().to_vec(),
                    truncated: !e.get_overflowing().is_empty(),
                })
            })
            .collect()
    }

    /// Embeds tokenized texts with `attn`, at most `batch_size` texts and
    /// [`Self::max_batch_tokens`] tokens at a time (a longer text runs alone). Returns one row
    /// per input, in input order; a row does not depend on the batching or on the other texts.
    /// `progress` is called with the texts done so far.
    pub fn embed_encoded(
        &self,
        enc: &[Encoded],
        attn: &mut dyn AttentionBackend,
        batch_size: usize,
        normalize: bool,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(enc.len());
        let mut profile = Profile::default();
        for (first, batch) in batches(enc, batch_size, self.max_batch_tokens) {
            let ids: Vec<&[u32]> = batch.iter().map(|e| e.ids.as_slice()).collect();
            let types: Vec<&[u32]> = batch.iter().map(|e| e.type_ids.as_slice()).collect();
            let names: Vec<usize> = (first..first + batch.len()).collect();
            let hidden = self
                .model
                .forward(&ids, &types, &names, attn, &mut profile)?;
            for (s, mut row) in self.pool(&hidden).into_iter().enumerate() {
                let i = first + s;
                if let Some(x) = row.iter().find(|x| !x.is_finite()) {
                    return Err(Error::InvalidInput(format!(
                        "the model produced a non-finite value ({x}) for text {i}: the finite weights \
                         in {} overflow f32 on this input (is the checkpoint meant for this config?)",
                        self.dir.display()
                    )));
                }
                if normalize {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    row.iter_mut().for_each(|x| *x /= norm);
                }
                out.push(row);
            }
            progress(out.len());
        }
        if let Ok(mut p) = self.profile.lock() {
            for (a, b) in p.seconds.iter_mut().zip(profile.seconds) {
                *a += b;
            }
        }
        Ok(out)
    }

    /// Tokenizes and embeds texts; see [`Self::embed_encoded`].
    pub fn embed<S: AsRef<str>>(
        &self,
        texts: &[S],
        attn: &mut dyn AttentionBackend,
        batch_size: usize,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let enc = self.tokenize(texts)?;
        self.embed_encoded(&enc, attn, batch_size, normalize, &mut |_| {})
    }

    fn pool(&self, hidden: &Hidden) -> Vec<Vec<f32>> {
        let h = self.model.config.hidden_size;
        hidden
            .offsets
            .windows(2)
            .map(|w| {
                let rows = &hidden.states[w[0] * h..w[1] * h];
                match self.pooling {
                    Pooling::Cls => rows[..h].to_vec(),
                    Pooling::Mean => {
                        let mut sum = vec![0.0f64; h];
                        for t in rows.chunks_exact(h) {
                            for (s, &x) in sum.iter_mut().zip(t) {
                                *s += x as f64;
                            }
                        }
                        let count = (w[1] - w[0]).max(1) as f64;
                        sum.iter().map(|s| (s / count) as f32).collect()
                    }
                }
            })
            .collect()
    }
}

/// Default token budget of one forward pass: 4,096 tokens of a 384-wide model hold about
/// 56 MB of activations (the widest, the feed-forward's, is 1,536 floats per token). The
/// model keeps its activation buffers between passes, so a smaller budget also means fewer
/// fresh pages to fault in: against 16,384, peak memory 187 vs 419 MiB and 73k vs 131k page
/// faults on 30 passages of 512 tokens, no slower at one or two threads (measured with
/// `hdp embed --max-batch-tokens`, alternating).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 4_096;

/// Consecutive runs of texts (first index, texts) with at most `max_texts` texts and at most
/// `max_tokens` tokens each (a text longer than the budget runs alone).
fn batches(enc: &[Encoded], max_texts: usize, max_tokens: usize) -> Vec<(usize, &[Encoded])> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, e) in enc.iter().enumerate() {
        let n = e.ids.len();
        if i > start && (i - start >= max_texts.max(1) || tokens + n > max_tokens) {
            out.push((start, &enc[start..i]));
            (start, tokens) = (i, 0);
        }
        tokens += n;
    }
    if start < enc.len() {
        out.push((start, &enc[start..]));
    }
    out
}

/// Where assets live: `$HDP_ASSETS`, else `./assets` if it exists, else the repository's
/// `assets` folder (as built).
pub fn assets_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HDP_ASSETS") {
        return p.into();
    }
    let local = PathBuf::from("assets");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

/// The default model folder (`all-MiniLM-L6-v2` under [`assets_dir`]).
pub fn default_model_dir() -> PathBuf {
    assets_dir().join("all-MiniLM-L6-v2")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lens: &[usize]) -> Vec<Encoded> {
        lens.iter()
            .map(|&n| Encoded {
                ids: vec![1; n],
                type_ids: vec![0; n],
                truncated: false,
            })
            .collect()
    }

    #[test]
    fn batches_respect_text_and_token_budgets_and_keep_order() {
        let enc = texts(&[5, 5, 5, 20, 1, 1, 1]);
        let b = batches(&enc, 2, 12);
        let spans: Vec<(usize, usize)> = b.iter().map(|(f, s)| (*f, s.len())).collect();
        assert_eq!(spans, vec![(0, 2), (2, 1), (3, 1), (4, 2), (6, 1)]);
        assert!(batches(&[], 4, 10).is_empty());
        // Everything covered exactly once, in order.
        let all: usize = b.iter().map(|(_, s)| s.len()).sum();
        assert_eq!(all, enc.len());
    }
}
