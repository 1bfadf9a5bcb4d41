//! BERT encoder (Devlin et al. 2019) in the Hugging Face checkpoint layout, written so the
//! attention step is pluggable ([`crate::backend::AttentionBackend`]). One struct per block with
//! `load(vb, cfg)` and `forward`; weight paths are exactly the checkpoint's names.

use crate::backend::{AttentionBackend, LayerInput};
use crate::config::{Activation, BertConfig};
use crate::Result;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

/// `embeddings.*`: word + position + token type, then layer norm.
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
}

impl BertEmbeddings {
    /// Loads from `vb` (prefix `embeddings`).
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        Ok(BertEmbeddings {
            word_embeddings: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings: embedding(
                cfg.type_vocab_size,
                cfg.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    /// `ids`, `type_ids`: `[batch, N]` u32. Output `[batch, N, hidden]`.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        let (_b, n) = ids.dims2()?;
        let pos = Tensor::arange(0u32, n as u32, ids.device())?;
        let x = self
            .word_embeddings
            .forward(ids)?
            .broadcast_add(&self.position_embeddings.forward(&pos)?)?
            .add(&self.token_type_embeddings.forward(type_ids)?)?;
        Ok(self.layer_norm.forward(&x)?)
    }
}

/// One encoder layer: self-attention, output projection, feed-forward, each with residual and
/// layer norm (post-norm, as BERT).
pub struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    heads: usize,
    act: Activation,
}

impl BertLayer {
    /// Loads from `vb` (prefix `encoder.layer.{i}`).
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let a = vb.pp("attention");
        Ok(BertLayer {
            query: linear(h, h, a.pp("self").pp("query"))?,
            key: linear(h, h, a.pp("self").pp("key"))?,
            value: linear(h, h, a.pp("self").pp("value"))?,
            attn_out: linear(h, h, a.pp("output").pp("dense"))?,
            attn_norm: layer_norm(h, cfg.layer_norm_eps, a.pp("output").pp("LayerNorm"))?,
            intermediate: linear(h, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: linear(cfg.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: layer_norm(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
        })
    }

    /// `[batch, N, hidden] -> [batch, N, heads, d] -> [batch, heads, N, d]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        Ok(x.reshape((b, n, self.heads, h / self.heads))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Runs the layer; attention through `attn`.
    pub fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        token_valid: &[bool],
        sequence_ids: &[usize],
        attn: &mut dyn AttentionBackend,
    ) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let q = self.split_heads(&self.query.forward(x)?)?;
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let ctx = attn.attend(&LayerInput {
            layer,
            q: &q,
            k: &k,
            v: &v,
            token_valid,
            sequence_ids,
        })?;
        let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((b, n, h))?;
        let x = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let inner = self.intermediate.forward(&x)?;
        let inner = match self.act {
            Activation::Gelu => inner.gelu_erf()?,
            Activation::GeluNew => inner.gelu()?,
            Activation::Relu => inner.relu()?,
        };
        Ok(self
            .out_norm
            .forward(&(self.output.forward(&inner)? + x)?)?)
    }
}

/// The encoder: embeddings and layers (the pooler is not used by sentence embeddings).
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    /// The configuration the weights were loaded with.
    pub config: BertConfig,
}

impl BertModel {
    /// Loads every weight; shape mismatches against `cfg` are errors.
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let embeddings = BertEmbeddings::load(vb.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(vb.pp(format!("encoder.layer.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(BertModel {
            embeddings,
            layers,
            config: cfg.clone(),
        })
    }

    /// Hidden states `[batch, N, hidden]` for token ids `[batch][N]` (equal lengths, padded),
    /// with `token_valid` (`batch * N`) marking real tokens.
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        type_ids: &[Vec<u32>],
        token_valid: &[bool],
        sequence_ids: &[usize],
        attn: &mut dyn AttentionBackend,
        device: &Device,
    ) -> Result<Tensor> {
        let (b, n) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat = |v: &[Vec<u32>]| v.iter().flatten().copied().collect::<Vec<u32>>();
        let ids_t = Tensor::from_vec(flat(ids), (b, n), device)?;
        let types_t = Tensor::from_vec(flat(type_ids), (b, n), device)?;
        let mut x = self.embeddings.forward(&ids_t, &types_t)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(i, &x, token_valid, sequence_ids, attn)?;
        }
        Ok(x.to_dtype(DType::F32)?)
    }
}
