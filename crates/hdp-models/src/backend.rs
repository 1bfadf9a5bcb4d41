//! Pluggable attention for the model runtime. The model computes Q, K, V (`[batch, heads, N, d]`)
//! and hands them to an [`AttentionBackend`]; everything else in the forward pass is fixed.
//!
//! - [`DenseCandle`]: dense attention with candle matmuls (the fast dense path);
//! - [`DenseReference`]: `hdp_attention::dense`, the plain f64 reference;
//! - [`HdpBackend`]: HDP attention with the fast kernels (`hdp_attention::fast`, the default)
//!   or the reference (`hdp_attention::hdp`); it also accumulates sparsity statistics and, on
//!   request, the full trace. Both kernels make identical pruning decisions.

use crate::Result;
use candle_core::{Device, Tensor as CTensor};
use hdp_attention::{AttentionProblem, ValidConfig};
use hdp_core::trace::LayerTrace;
use hdp_core::{Tensor, Trace, TraceSummary};
use rayon::prelude::*;

/// One layer's attention inputs as the model hands them over.
pub struct LayerInput<'a> {
    /// Layer index.
    pub layer: usize,
    /// Queries `[batch, heads, N, d]`.
    pub q: &'a CTensor,
    /// Keys.
    pub k: &'a CTensor,
    /// Values.
    pub v: &'a CTensor,
    /// Key-padding mask, `batch * N` flags, true = real token.
    pub token_valid: &'a [bool],
    /// Caller's identifiers of the batch items (their index in the input), for traces.
    pub sequence_ids: &'a [usize],
}

/// An attention implementation the model can run.
pub trait AttentionBackend: Send {
    /// Attention output `[batch, heads, N, d]` for one layer.
    fn attend(&mut self, x: &LayerInput) -> Result<CTensor>;
}

/// Dense softmax attention with candle tensor operations.
#[derive(Clone, Copy, Debug, Default)]
pub struct DenseCandle;

impl AttentionBackend for DenseCandle {
    fn attend(&mut self, x: &LayerInput) -> Result<CTensor> {
        let (b, _h, n, d) = x.q.dims4()?;
        let scores = (x.q.matmul(&x.k.t()?)? / (d as f64).sqrt())?;
        // Additive mask: -inf-like bias on padded keys.
        let bias: Vec<f32> = x
            .token_valid
            .iter()
            .map(|&v| if v { 0.0 } else { -1e30 })
            .collect();
        let bias = CTensor::from_vec(bias, (b, 1, 1, n), x.q.device())?;
        let p = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&bias)?)?;
        let out = p.matmul(&x.v.contiguous()?)?;
        // Padded query rows output zero, as in every hdp implementation.
        let rows: Vec<f32> = x.token_valid.iter().map(|&v| v as u8 as f32).collect();
        let rows = CTensor::from_vec(rows, (b, 1, n, 1), x.q.device())?;
        Ok(out.broadcast_mul(&rows)?)
    }
}

/// Converts a candle `[batch, heads, N, d]` tensor to an hdp tensor.
pub fn to_hdp(t: &CTensor) -> Result<Tensor> {
    let shape = t.dims().to_vec();
    let data = t.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Tensor::new(shape, data)?)
}

fn to_candle(t: Tensor, device: &Device) -> Result<CTensor> {
    let shape = t.shape().to_vec();
    Ok(CTensor::from_vec(t.into_data(), shape, device)?)
}

/// Splits a batch into one problem per sequence, so sequences run in parallel and each
/// sequence's result is independent of its batch-mates.
fn per_sequence(x: &LayerInput) -> Result<Vec<AttentionProblem>> {
    let (b, h, n, d) = x.q.dims4()?;
    let (q, k, v) = (to_hdp(x.q)?, to_hdp(x.k)?, to_hdp(x.v)?);
    let per = h * n * d;
    (0..b)
        .map(|i| {
            let t = |t: &Tensor| {
                Tensor::new(vec![1, h, n, d], t.data()[i * per..(i + 1) * per].to_vec())
            };
            Ok(AttentionProblem::new(
                t(&q)?,
                t(&k)?,
                t(&v)?,
                Some(x.token_valid[i * n..(i + 1) * n].to_vec()),
                false,
            )?)
        })
        .collect()
}

fn concat(outs: Vec<Tensor>, shape: &[usize], device: &Device) -> Result<CTensor> {
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in outs {
        data.extend_from_slice(o.data());
    }
    to_candle(Tensor::new(shape.to_vec(), data)?, device)
}

/// The plain f64 dense reference (`hdp_attention::dense`).
#[derive(Clone, Copy, Debug, Default)]
pub struct DenseReference;

impl AttentionBackend for DenseReference {
    fn attend(&mut self, x: &LayerInput) -> Result<CTensor> {
        let outs = per_sequence(x)?
            .par_iter()
            .map(hdp_attention::dense::attention)
            .collect::<hdp_core::Result<Vec<_>>>()?;
        concat(outs, x.q.dims(), x.q.device())
    }
}

/// Per-head sparsity accumulated over a run (for heatmaps over layers x heads).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct HeadStats {
    /// Valid blocks seen.
    pub valid_blocks: u64,
    /// Blocks kept by block pruning.
    pub kept_blocks: u64,
    /// Times the head was pruned.
    pub pruned: u64,
    /// Times the head was run.
    pub runs: u64,
}

/// Which HDP implementation a [`HdpBackend`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HdpKernel {
    /// The plain f64 reference.
    Reference,
    /// The fast f32 SIMD kernels with this instruction set.
    Fast(hdp_attention::fast::Isa),
}

/// HDP attention with sparsity bookkeeping.
#[derive(Debug)]
pub struct HdpBackend {
    cfg: ValidConfig,
    /// Implementation used; [`HdpBackend::new`] picks the fast kernels for this CPU.
    pub kernel: HdpKernel,
    /// Totals per layer.
    pub layer_summaries: Vec<TraceSummary>,
    /// Per layer, per head statistics.
    pub head_stats: Vec<Vec<HeadStats>>,
    /// Full trace, when requested: every layer of the first `trace_limit` sequences.
    pub trace: Option<Trace>,
    /// Valid score entries (query, key) over every layer, head and sequence: what dense
    /// attention computes (exponentials).
    pub dense_entries: u64,
    /// Dense Q.K^T MACs over the same entries (equal to dense P.V MACs).
    pub dense_qk_macs: u64,
    /// Per sequence id, over all layers: valid and kept blocks summed over heads, heads pruned
    /// (`pruned`) out of heads run (`runs`).
    pub sequence_stats: std::collections::BTreeMap<usize, HeadStats>,
    trace_limit: usize,
}

impl HdpBackend {
    /// A backend running HDP with `cfg`; keeps the full trace of up to `trace_limit` sequences
    /// (0 = no trace).
    pub fn new(cfg: ValidConfig, trace_limit: usize) -> Result<Self> {
        let trace = (trace_limit > 0).then(|| Trace::new(hdp_attention::REFERENCE_PRODUCER, cfg));
        Ok(HdpBackend {
            cfg,
            kernel: HdpKernel::Fast(hdp_attention::fast::Isa::detect()),
            layer_summaries: Vec::new(),
            head_stats: Vec::new(),
            trace,
            trace_limit,
            dense_entries: 0,
            dense_qk_macs: 0,
            sequence_stats: Default::default(),
        })
    }

    /// Totals over every layer.
    pub fn summary(&self) -> TraceSummary {
        let mut s = TraceSummary::default();
        for l in &self.layer_summaries {
            s += *l;
        }
        s
    }

    fn record(&mut self, mut lt: LayerTrace) {
        let layer = lt.layer;
        if self.layer_summaries.len() <= layer {
            self.layer_summaries
                .resize(layer + 1, TraceSummary::default());
            self.head_stats.resize(layer + 1, Vec::new());
        }
        self.layer_summaries[layer] += lt.summary();
        let stats = &mut self.head_stats[layer];
        stats.resize(lt.heads.max(stats.len()), HeadStats::default());
        for seq in &lt.sequences {
            let t = seq.valid_tokens as u64;
            let entries = if lt.causal { t * (t + 1) / 2 } else { t * t } * lt.heads as u64;
            self.dense_entries += entries;
            self.dense_qk_macs += entries * lt.head_dim as u64;
            let valid = seq.valid.count() as u64;
            for h in &seq.heads {
                let kept = h.kept.count() as u64;
                for s in [
                    &mut stats[h.head],
                    self.sequence_stats.entry(seq.sequence).or_default(),
                ] {
                    s.valid_blocks += valid;
                    s.kept_blocks += kept;
                    s.pruned += h.pruned as u64;
                    s.runs += 1;
                }
            }
        }
        if let Some(trace) = &mut self.trace {
            trace.producer = match self.kernel {
                HdpKernel::Reference => hdp_attention::REFERENCE_PRODUCER,
                HdpKernel::Fast(_) => hdp_attention::FAST_PRODUCER,
            }
            .into();
            lt.sequences.retain(|s| s.sequence < self.trace_limit);
            if lt.sequences.is_empty() {
                return;
            }
            match trace.layers.iter_mut().find(|l| l.layer == layer) {
                Some(existing) => existing.sequences.extend(lt.sequences),
                None => trace.layers.push(lt),
            }
        }
    }
}

impl AttentionBackend for HdpBackend {
    fn attend(&mut self, x: &LayerInput) -> Result<CTensor> {
        let cfg = self.cfg;
        let results = per_sequence(x)?
            .par_iter()
            .map(|p| match self.kernel {
                HdpKernel::Reference => hdp_attention::hdp::attention(p, &cfg, x.layer),
                HdpKernel::Fast(isa) => hdp_attention::fast::hdp_attention(p, &cfg, x.layer, isa),
            })
            .collect::<hdp_core::Result<Vec<_>>>()?;
        let mut outs = Vec::with_capacity(results.len());
        let mut merged: Option<LayerTrace> = None;
        for (r, &id) in results.into_iter().zip(x.sequence_ids) {
            outs.push(r.output);
            let mut lt = r.trace;
            for s in &mut lt.sequences {
                s.sequence = id;
            }
            match &mut merged {
                None => merged = Some(lt),
                Some(m) => m.sequences.extend(lt.sequences),
            }
        }
        if let Some(lt) = merged {
            self.record(lt);
        }
        concat(outs, x.q.dims(), x.q.device())
    }
}

/// Wraps a backend and keeps a copy of one layer's Q, K, V (`[batch, heads, N, d]`) from the
/// first batch that reaches it: real attention inputs for benchmarks (`hdp bench attention
/// --qkv`) and for `hdp attention --qkv`.
pub struct CaptureQkv<B> {
    /// The backend doing the work.
    pub inner: B,
    /// Layer to capture.
    pub layer: usize,
    /// Captured Q, K, V and the key-padding mask.
    pub captured: Option<(Tensor, Tensor, Tensor, Vec<bool>)>,
}

impl<B: AttentionBackend> AttentionBackend for CaptureQkv<B> {
    fn attend(&mut self, x: &LayerInput) -> Result<CTensor> {
        if x.layer == self.layer && self.captured.is_none() {
            self.captured = Some((
                to_hdp(x.q)?,
                to_hdp(x.k)?,
                to_hdp(x.v)?,
                x.token_valid.to_vec(),
            ));
        }
        self.inner.attend(x)
    }
}
