//! BERT encoder (Devlin et al. 2019) in the Hugging Face checkpoint layout, with its own CPU
//! forward pass: weights read from `model.safetensors` by their checkpoint names, dense layers
//! on [`crate::linear`] (row-invariant, packed, fused epilogues), attention through a pluggable
//! [`AttentionBackend`].
//!
//! Sequences are never padded: a batch is the concatenation of its sequences' token rows, every
//! dense layer runs on all rows at once, and attention runs per sequence on exactly its tokens.
//! With the row-invariant dense layers this makes a text's hidden states (and HDP's decisions)
//! bit-identical whatever the batch size, the batch composition and the thread count.

use crate::backend::{AttentionBackend, LayerInput};
use crate::config::{Activation, BertConfig};
use crate::linear::{self, layer_norm, Epilogue, Linear, Tier};
use crate::{Error, Result};
use hdp_attention::AttentionProblem;
use hdp_core::Tensor;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Stages of the forward pass, for `--profile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Token + position + type embeddings and their layer norm.
    Embeddings,
    /// The fused Q/K/V projection.
    QkvProjection,
    /// Re-laying Q, K, V per sequence and head, and the context back.
    AttentionLayout,
    /// The attention backend (dense or HDP).
    Attention,
    /// Output projection + bias + residual, then layer norm.
    OutputProjection,
    /// Feed-forward up-projection + bias + activation.
    FfnUp,
    /// Feed-forward down-projection + bias + residual, then layer norm.
    FfnDown,
}

impl Stage {
    /// Every stage in forward order.
    pub const ALL: [Stage; 7] = [
        Stage::Embeddings,
        Stage::QkvProjection,
        Stage::AttentionLayout,
        Stage::Attention,
        Stage::OutputProjection,
        Stage::FfnUp,
        Stage::FfnDown,
    ];

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Embeddings => "embeddings",
            Stage::QkvProjection => "qkv projection",
            Stage::AttentionLayout => "attention layout",
            Stage::Attention => "attention",
            Stage::OutputProjection => "output projection + norm",
            Stage::FfnUp => "ffn up + activation",
            Stage::FfnDown => "ffn down + norm",
        }
    }
}

/// Seconds spent per [`Stage`], summed over calls.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// Seconds per stage, indexed like [`Stage::ALL`].
    pub seconds: [f64; 7],
}

impl Profile {
    fn add(&mut self, s: Stage, t: Instant) {
        self.seconds[s as usize] += t.elapsed().as_secs_f64();
    }

    /// Seconds of one stage.
    pub fn get(&self, s: Stage) -> f64 {
        self.seconds[s as usize]
    }
}

/// A layer norm's parameters.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// Reads named tensors from a safetensors file, checking shapes against the config and values
/// for NaN/Inf.
struct Weights<'a> {
    st: SafeTensors<'a>,
    prefix: &'static str,
    path: &'a Path,
}

impl Weights<'_> {
    fn err(&self, reason: String) -> Error {
        Error::Weights {
            path: self.path.into(),
            reason,
        }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let t = self.st.tensor(&full).map_err(|_| {
            self.err(format!(
                "no tensor {full:?} (does the file match config.json? a BERT checkpoint has \
                 embeddings.*, encoder.layer.N.* tensors)"
            ))
        })?;
        if t.shape() != shape {
            return Err(self.err(format!(
                "tensor {full} has shape {:?}, config.json implies {shape:?} (does the file \
                 match config.json?)",
                t.shape()
            )));
        }
        let d = t.data();
        let vals: Vec<f32> = match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| hdp_core::tensor::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(self.err(format!(
                    "tensor {full} has dtype {other:?}; supported: F32, F16, BF16"
                )))
            }
        };
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            return Err(self.err(format!(
                "tensor {full} holds a non-finite value ({}) at flat index {i}; the file is \
                 corrupt (re-fetch the model: python3 scripts/fetch_assets.py)",
                vals[i]
            )));
        }
        Ok(vals)
    }

    fn linear(&self, name: &str, n: usize, k: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.get(&format!("{name}.weight"), &[n, k])?,
            self.get(&format!("{name}.bias"), &[n])?,
        ))
    }

    fn norm(&self, name: &str, h: usize) -> Result<Norm> {
        Ok(Norm {
            gamma: self.get(&format!("{name}.weight"), &[h])?,
            beta: self.get(&format!("{name}.bias"), &[h])?,
        })
    }
}

/// One encoder layer: self-attention, output projection, feed-forward, each with residual and
/// layer norm (post-norm, as BERT).
struct BertLayer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

/// The encoder: embeddings and layers (the pooler is not used by sentence embeddings).
pub struct BertModel {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<BertLayer>,
    tier: Tier,
    /// The configuration the weights were loaded with.
    pub config: BertConfig,
    /// Activation buffers of the last forward pass, reused by the next (see [`Workspace`]).
    workspace: std::sync::Mutex<Workspace>,
}

/// The layer loop's activation buffers, kept between forward passes: fresh buffers of a
/// batch's size come from the kernel as untouched pages, and faulting them in cost about 8% of
/// an embedding run at 512 tokens (`perf record`, one thread; `clear_page_erms`). Buffers only
/// grow, so the memory held is that of the largest batch, as during that batch's pass. A
/// second forward pass running concurrently finds the workspace taken and allocates its own.
#[derive(Default)]
struct Workspace {
    /// Buffers of the per-head Q/K/V and of the attention outputs, recycled from layer to
    /// layer (fresh ones cost a page fault per 4 KiB: `clear_page_erms` was 5.5% of a
    /// one-thread run once the projection wrote them directly).
    pool: Vec<Vec<f32>>,
    ctx: Vec<f32>,
    x1: Vec<f32>,
    inner: Vec<f32>,
}

/// Token rows of one forward pass: sequences back to back, no padding.
pub struct Hidden {
    /// `[rows, hidden]`, row-major.
    pub states: Vec<f32>,
    /// Start row of each sequence, plus the total at the end.
    pub offsets: Vec<usize>,
}

impl BertModel {
    /// Loads every weight of `model.safetensors` (bytes at `path`); shapes must match `cfg`,
    /// values must be finite.
    pub fn load(bytes: &[u8], path: &Path, cfg: &BertConfig) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Weights {
            path: PathBuf::from(path),
            reason: format!("{e} (is the file complete and does it match config.json?)"),
        })?;
        let prefix = if st.tensor("embeddings.word_embeddings.weight").is_err()
            && st.tensor("bert.embeddings.word_embeddings.weight").is_ok()
        {
            "bert."
        } else {
            ""
        };
        let w = Weights { st, prefix, path };
        let (h, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let q = w.linear(&format!("{p}.attention.self.query"), h, h)?;
                let k = w.linear(&format!("{p}.attention.self.key"), h, h)?;
                let v = w.linear(&format!("{p}.attention.self.value"), h, h)?;
                let o = w.linear(&format!("{p}.attention.output.dense"), h, h)?;
                let up = w.linear(&format!("{p}.intermediate.dense"), ff, h)?;
                let down = w.linear(&format!("{p}.output.dense"), h, ff)?;
                Ok(BertLayer {
                    qkv: Linear::concat(&[(&q.0, &q.1, h), (&k.0, &k.1, h), (&v.0, &v.1, h)], h),
                    attn_out: Linear::new(&o.0, &o.1, h, h),
                    attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                    intermediate: Linear::new(&up.0, &up.1, ff, h),
                    output: Linear::new(&down.0, &down.1, h, ff),
                    out_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertModel {
            word: w.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: w.get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?,
            emb_norm: w.norm("embeddings.LayerNorm", h)?,
            layers,
            tier: Tier::detect(),
            config: cfg.clone(),
            workspace: Default::default(),
        })
    }

    /// The instruction-set tier of the dense layers.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Runs the dense layers with `tier` (which must be available on this CPU).
    pub fn set_tier(&mut self, tier: Tier) -> Result<()> {
        if !tier.available() {
            return Err(Error::InvalidInput(format!(
                "this CPU cannot run the {} tier",
                tier.name()
            )));
        }
        self.tier = tier;
        Ok(())
    }

    fn embed_tokens(&self, ids: &[&[u32]], type_ids: &[&[u32]], rows: usize) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let h = cfg.hidden_size;
        let mut x = vec![0.0f32; rows * h];
        let mut r = 0;
        for (s, (ids, types)) in ids.iter().zip(type_ids).enumerate() {
            if ids.len() != types.len() {
                return Err(Error::InvalidInput(format!(
                    "sequence {s}: {} token ids but {} type ids",
                    ids.len(),
                    types.len()
                )));
            }
            for (j, (&id, &t)) in ids.iter().zip(types.iter()).enumerate() {
                if id as usize >= cfg.vocab_size || t as usize >= cfg.type_vocab_size {
                    return Err(Error::InvalidInput(format!(
                        "sequence {s}, token {j}: id {id} / type {t} outside the model's \
                         vocabulary ({}) / types ({}); was the text tokenized for this model?",
                        cfg.vocab_size, cfg.type_vocab_size
                    )));
                }
                let row = &mut x[r * h..(r + 1) * h];
                let (w, p, tt) = (
                    &self.word[id as usize * h..][..h],
                    &self.position[j * h..][..h],
                    &self.token_type[t as usize * h..][..h],
                );
                for c in 0..h {
                    row[c] = (w[c] + p[c]) + tt[c];
                }
                r += 1;
            }
        }
        layer_norm(
            &mut x,
            h,
            &self.emb_norm.gamma,
            &self.emb_norm.beta,
            cfg.layer_norm_eps,
            self.tier,
        );
        Ok(x)
    }

    /// Hidden states of the last layer for token ids `ids[s]` and segment ids `type_ids[s]` of
    /// each sequence (no padding; each at most `max_position_embeddings` long and not empty).
    /// `sequence_ids` are the caller's names of the sequences (for traces); `profile` collects
    /// the time per stage.
    pub fn forward(
        &self,
        ids: &[&[u32]],
        type_ids: &[&[u32]],
        sequence_ids: &[usize],
        attn: &mut dyn AttentionBackend,
        profile: &mut Profile,
    ) -> Result<Hidden> {
        let cfg = &self.config;
        let (h, ff) = (cfg.hidden_size, cfg.intermediate_size);
        if ids.len() != type_ids.len() || ids.len() != sequence_ids.len() {
            return Err(Error::InvalidInput(format!(
                "{} sequences of ids, {} of type ids, {} sequence ids",
                ids.len(),
                type_ids.len(),
                sequence_ids.len()
            )));
        }
        let mut offsets = vec![0];
        for (s, t) in ids.iter().enumerate() {
            if t.is_empty() || t.len() > cfg.max_position_embeddings {
                return Err(Error::InvalidInput(format!(
                    "sequence {s} has {} tokens; the model takes 1..={} (truncate the text or \
                     lower --max-length)",
                    t.len(),
                    cfg.max_position_embeddings
                )));
            }
            offsets.push(offsets[s] + t.len());
        }
        let rows = *offsets.last().unwrap_or(&0);
        hdp_core::budget::check_elements("the model's feed-forward activations", &[rows, ff])?;
        let t = Instant::now();
        let mut x = self.embed_tokens(ids, type_ids, rows)?;
        profile.add(Stage::Embeddings, t);
        // Every element of these buffers is written before it is read in each layer (the dense
        // layers write their whole output; `ctx` gets every row of every sequence), so stale
        // values from an earlier batch never leak.
        let mut ws = self
            .workspace
            .try_lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        ws.ctx.resize(rows * h, 0.0);
        ws.x1.resize(rows * h, 0.0);
        ws.inner.resize(rows * ff, 0.0);
        let result = self.layers_forward(&mut x, &offsets, sequence_ids, attn, profile, &mut ws);
        if let Ok(mut w) = self.workspace.try_lock() {
            if w.inner.capacity() <= ws.inner.capacity() {
                *w = ws;
            }
        }
        result?;
        Ok(Hidden { states: x, offsets })
    }

    /// The encoder layers over `x` (`rows x hidden`, sequences at `offsets`), in place.
    fn layers_forward(
        &self,
        x: &mut [f32],
        offsets: &[usize],
        sequence_ids: &[usize],
        attn: &mut dyn AttentionBackend,
        profile: &mut Profile,
        ws: &mut Workspace,
    ) -> Result<()> {
        let cfg = &self.config;
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let d = h / heads;
        let tier = self.tier;
        let n_seq = offsets.len() - 1;
        let rows = offsets[n_seq];
        let Workspace {
            pool,
            ctx,
            x1,
            inner,
        } = ws;
        let (ctx, x1, inner) = (
            &mut ctx[..rows * h],
            &mut x1[..rows * h],
            &mut inner[..rows * cfg.intermediate_size],
        );
        for (li, layer) in self.layers.iter().enumerate() {
            // The projection writes Q, K and V of every sequence straight into its per-head
            // layout (`[heads, N, d]` each): no `[rows, 3 hidden]` buffer to re-lay.
            let t = Instant::now();
            let mut parts: Vec<[Vec<f32>; 3]> = (0..n_seq)
                .map(|s| {
                    let len = heads * (offsets[s + 1] - offsets[s]) * d;
                    std::array::from_fn(|_| {
                        let mut v = pool.pop().unwrap_or_default();
                        v.clear();
                        v.reserve_exact(len);
                        v
                    })
                })
                .collect();
            let sink = HeadMajor::new(offsets, &mut parts, h, d);
            layer.qkv.forward_to(x, rows, &sink, Epilogue::None, tier);
            drop(sink);
            for (s, p) in parts.iter_mut().enumerate() {
                let len = heads * (offsets[s + 1] - offsets[s]) * d;
                for v in p.iter_mut() {
                    // SAFETY: the projection wrote every element of every sequence's three
                    // buffers (`HeadMajor` maps the rows x 3 hidden outputs onto them one to
                    // one), within their capacity.
                    unsafe { v.set_len(len) };
                }
            }
            profile.add(Stage::QkvProjection, t);

            let t = Instant::now();
            let problems = parts
                .into_par_iter()
                .enumerate()
                .map(|(s, [q, k, v])| {
                    let shape = vec![1, heads, offsets[s + 1] - offsets[s], d];
                    Ok(AttentionProblem::new(
                        Tensor::new(shape.clone(), q)?,
                        Tensor::new(shape.clone(), k)?,
                        Tensor::new(shape, v)?,
                        None,
                        false,
                    )?)
                })
                .collect::<Result<Vec<_>>>()?;
            profile.add(Stage::AttentionLayout, t);

            let t = Instant::now();
            let outs = attn.attend(&LayerInput {
                layer: li,
                problems: &problems,
                sequence_ids,
            })?;
            profile.add(Stage::Attention, t);

            let t = Instant::now();
            if outs.len() != problems.len() {
                return Err(Error::InvalidInput(format!(
                    "the attention backend returned {} outputs for {} sequences",
                    outs.len(),
                    problems.len()
                )));
            }
            for (s, o) in outs.iter().enumerate() {
                let (r0, n) = (offsets[s], offsets[s + 1] - offsets[s]);
                if o.shape() != [1, heads, n, d] {
                    return Err(Error::InvalidInput(format!(
                        "the attention backend returned shape {:?} for [1, {heads}, {n}, {d}]",
                        o.shape()
                    )));
                }
                let od = o.data();
                for i in 0..n {
                    let dst = &mut ctx[(r0 + i) * h..][..h];
                    for hd in 0..heads {
                        copy_row(&mut dst[hd * d..][..d], &od[(hd * n + i) * d..][..d]);
                    }
                }
            }
            for p in problems {
                let (q, k, v) = p.into_parts();
                pool.extend([q.into_data(), k.into_data(), v.into_data()]);
            }
            pool.extend(outs.into_iter().map(Tensor::into_data));
            // The next layer takes three per sequence: keep no more (the largest last).
            pool.sort_unstable_by_key(|v| v.capacity());
            let extra = pool.len().saturating_sub(3 * n_seq);
            pool.drain(..extra);
            profile.add(Stage::AttentionLayout, t);

            let t = Instant::now();
            layer
                .attn_out
                .forward(ctx, rows, x1, Epilogue::Residual(x), tier);
            let eps = cfg.layer_norm_eps;
            layer_norm(
                x1,
                h,
                &layer.attn_norm.gamma,
                &layer.attn_norm.beta,
                eps,
                tier,
            );
            profile.add(Stage::OutputProjection, t);

            let t = Instant::now();
            let act = match cfg.hidden_act {
                Activation::Gelu => Epilogue::Gelu,
                Activation::GeluNew => Epilogue::GeluTanh,
                Activation::Relu => Epilogue::Relu,
            };
            layer.intermediate.forward(x1, rows, inner, act, tier);
            profile.add(Stage::FfnUp, t);

            let t = Instant::now();
            layer
                .output
                .forward(inner, rows, x, Epilogue::Residual(x1), tier);
            layer_norm(x, h, &layer.out_norm.gamma, &layer.out_norm.beta, eps, tier);
            profile.add(Stage::FfnDown, t);
        }
        Ok(())
    }
}

/// The fused Q/K/V projection's output (`rows x 3 hidden`, sequences at `offsets`) mapped onto
/// each sequence's Q, K and V in per-head layout (`[heads, N, d]`): output `(r, c)` of
/// sequence `s` (row `i = r - offsets[s]`) goes to part `c / hidden`, head `(c % hidden) / d`,
/// element `(head N + i) d + c % d`; runs end at a head's last column.
struct HeadMajor<'a> {
    offsets: &'a [usize],
    bases: Vec<[*mut f32; 3]>,
    h: usize,
    d: usize,
}

impl<'a> HeadMajor<'a> {
    /// Over `parts` (per sequence, three buffers of capacity `heads N d`), borrowed for the
    /// sink's life.
    fn new(offsets: &'a [usize], parts: &'a mut [[Vec<f32>; 3]], h: usize, d: usize) -> Self {
        let bases = parts
            .iter_mut()
            .enumerate()
            .map(|(s, p)| {
                let len = h * (offsets[s + 1] - offsets[s]);
                p.each_mut().map(|v| {
                    assert!(v.capacity() >= len, "a part holds heads x N x d floats");
                    v.as_mut_ptr()
                })
            })
            .collect();
        HeadMajor {
            offsets,
            bases,
            h,
            d,
        }
    }
}

// SAFETY: for r < rows and c < 3 h the map (sequence, part, head, row, column) is one to one
// onto the parts' first `heads N d` elements (allocated: capacity checked in `new`), a run
// stays inside one head's row of `d` floats, and the parts are borrowed mutably by the sink.
unsafe impl linear::Sink for HeadMajor<'_> {
    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> (*mut f32, usize) {
        let s = self.offsets.partition_point(|&o| o <= r) - 1;
        let (i, n) = (r - self.offsets[s], self.offsets[s + 1] - self.offsets[s]);
        let (part, cc) = (c / self.h, c % self.h);
        let (head, dd) = (cc / self.d, cc % self.d);
        // SAFETY: inside the part's heads x N x d elements.
        let p = unsafe { self.bases[s][part].add((head * n + i) * self.d + dd) };
        (p, self.d - dd)
    }
}

// SAFETY: the pointers are into buffers the sink borrows mutably; threads write disjoint
// elements (the `Sink` contract).
unsafe impl Sync for HeadMajor<'_> {}
unsafe impl Send for HeadMajor<'_> {}

/// `dst = src` for one head's row (`d` floats, typically 32 or 64): an inline loop, where
/// `copy_from_slice` called `memmove` once per row (2% of an embedding run went to the calls).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    for (a, &b) in dst.iter_mut().zip(src) {
        *a = b;
    }
}
